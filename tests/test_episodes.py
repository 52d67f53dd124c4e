"""Class and speaker episodes over cached real speech: shapes, labels, disjointness, seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_paths import SHARED_DATA
from torch.utils.data import DataLoader

from metavox.audio.features import FrontendConfig
from metavox.data.batch import EpisodeBatch
from metavox.data.cache import FeatureStore, build_feature_store
from metavox.data.corpus import Corpus
from metavox.data.episodes import (
    ClassEpisodeSampler,
    EpisodeDataset,
    EpisodeError,
    SpeakerEpisodeSampler,
)

DATA = SHARED_DATA
# Speech Commands words with few clips each (6-34), from many speakers
SMALL_WORDS = ["bed", "bird", "cat", "dog", "eight", "five", "four", "marvin"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def fsdd(shared_data, cache_dir: Path) -> FeatureStore:
    """FSDD digits 0-4 by three speakers (750 clips, 50 per speaker and digit)."""
    corpus = Corpus.from_preset("fsdd", DATA / "fsdd").filter(
        labels=list("01234"), speakers=["george", "jackson", "theo"])
    return build_feature_store(corpus, FrontendConfig(), cache_dir, workers=2)


@pytest.fixture(scope="module")
def sc(shared_data, cache_dir: Path) -> FeatureStore:
    corpus = Corpus.from_preset("speech-commands", DATA / "speech_commands_v2_test")
    return build_feature_store(corpus.filter(labels=SMALL_WORDS), FrontendConfig(), cache_dir,
                               workers=0)


def _same(a: EpisodeBatch, b: EpisodeBatch) -> bool:
    return (torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
            and torch.equal(a.support_y, b.support_y) and torch.equal(a.query_y, b.query_y)
            and a.classes == b.classes and a.speakers == b.speakers)


def test_class_episode_shapes_and_labels(fsdd: FeatureStore) -> None:
    s = ClassEpisodeSampler(fsdd, ways=5, shots=2, queries=3, seed=0)
    b = s.sample(meta_batch=4, index=0)
    assert b.support_x.shape == (4, 10, 1, 40, 101) and b.query_x.shape == (4, 15, 1, 40, 101)
    assert b.support_x.dtype == torch.float32 and b.support_y.dtype == torch.int64
    for t in range(4):
        assert b.support_y[t].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        assert b.query_y[t].tolist() == [j for j in range(5) for _ in range(3)]
        assert len(set(b.classes[t])) == 5 and set(b.classes[t]) <= set(fsdd.label_names)
    assert any(b.classes[t] != sorted(b.classes[t]) for t in range(4))  # random class order
    flat = ClassEpisodeSampler(fsdd, 5, 2, 3, channel_dim=False).sample(2, 0)
    assert flat.support_x.shape == (2, 10, 40, 101)


def test_episode_contents_match_the_store(fsdd: FeatureStore) -> None:
    s = ClassEpisodeSampler(fsdd, ways=3, shots=4, queries=5, seed=1)
    b = s.sample(2, 3)
    for t in range(2):
        sup, qry, names = s.episode_rows(6 + t)
        assert names == b.classes[t]
        assert not set(sup.ravel()) & set(qry.ravel())  # no clip in both
        for j, name in enumerate(names):
            assert all(fsdd.labels[r] == name for r in (*sup[j], *qry[j]))
        np.testing.assert_array_equal(b.support_x[t, :, 0].numpy(), fsdd.take(sup.ravel()))
        np.testing.assert_array_equal(b.query_x[t, :, 0].numpy(), fsdd.take(qry.ravel()))
        spk = {fsdd.speakers[r] for r in (*sup.ravel(), *qry.ravel())}
        assert b.speakers[t] == sorted(spk)


def test_determinism_by_seed_and_index(fsdd: FeatureStore) -> None:
    a = ClassEpisodeSampler(fsdd, 4, 1, 2, seed=5)
    b = ClassEpisodeSampler(fsdd, 4, 1, 2, seed=5)
    assert _same(a.sample(8, 2), b.sample(8, 2))
    assert not _same(a.sample(8, 2), ClassEpisodeSampler(fsdd, 4, 1, 2, seed=6).sample(8, 2))
    assert not _same(a.sample(8, 2), a.sample(8, 3))
    # batch 2 of 8 tasks = episodes 16..23, whatever was sampled before
    assert _same(a.sample(1, 19), a.sample(8, 2).task(3))


def test_speaker_disjoint_class_episodes(fsdd: FeatureStore, sc: FeatureStore) -> None:
    for store, ways, shots, queries in ((fsdd, 5, 5, 10), (sc, 3, 2, 3)):
        s = ClassEpisodeSampler(store, ways, shots, queries, speaker_disjoint=True,
                                too_few="drop", seed=2)
        for i in range(20):
            sup, qry, _ = s.episode_rows(i)
            sup_spk = {store.speakers[r] for r in sup.ravel()}
            qry_spk = {store.speakers[r] for r in qry.ravel()}
            assert not sup_spk & qry_spk
        assert s.sample(2, 0).query_x.shape == (2, ways * queries, 1, 40, 101)


def test_speaker_episodes(fsdd: FeatureStore) -> None:
    s = SpeakerEpisodeSampler(fsdd, ways=4, shots=3, queries=5, seed=0)
    assert s.speakers == ["george", "jackson", "theo"]
    b = s.sample(6, 0)
    assert b.support_x.shape == (6, 12, 1, 40, 101) and b.query_x.shape == (6, 20, 1, 40, 101)
    seen = set()
    for t in range(6):
        assert len(b.speakers[t]) == 1
        sup, qry, names = s.episode_rows(t)
        assert names == b.classes[t] and len(set(names)) == 4
        rows = [*sup.ravel(), *qry.ravel()]
        assert {fsdd.speakers[r] for r in rows} == set(b.speakers[t])
        assert not set(sup.ravel()) & set(qry.ravel())
        for j, name in enumerate(names):
            assert all(fsdd.labels[r] == name for r in (*sup[j], *qry[j]))
        seen.add(b.speakers[t][0])
    assert len(seen) > 1
    assert _same(s.sample(6, 0), SpeakerEpisodeSampler(fsdd, 4, 3, 5, seed=0).sample(6, 0))


def test_dataloader_workers_give_identical_batches(fsdd: FeatureStore) -> None:
    ds = EpisodeDataset(ClassEpisodeSampler(fsdd, 5, 1, 2, seed=9), meta_batch=3, length=4)
    serial = list(DataLoader(ds, batch_size=None, num_workers=0))
    parallel = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert len(serial) == len(parallel) == 4
    assert all(_same(a, b) for a, b in zip(serial, parallel, strict=True))
    assert isinstance(parallel[0], EpisodeBatch)
    assert _same(serial[1], ds.sampler.sample(3, 1))
    shifted = EpisodeDataset(ds.sampler, 3, 2, start=2)
    assert _same(shifted[0], serial[2])
    with pytest.raises(IndexError):
        ds[4]


def test_too_few_clips_error(sc: FeatureStore) -> None:
    # clips: bed 10, bird 10, cat 10, dog 7, eight 34, five 23, four 18, marvin 11
    with pytest.raises(EpisodeError) as info:
        ClassEpisodeSampler(sc, ways=3, shots=5, queries=10)
    msg = str(info.value)
    assert "'bed' has 10 clips" in msg and "need 15" in msg and "'dog' (7)" in msg
    assert "3 of 8 classes qualify" in msg and "too_few='drop'" in msg
    assert "shots+queries <= 7 works with all 8 classes" in msg
    s = ClassEpisodeSampler(sc, ways=3, shots=5, queries=10, too_few="drop")
    assert s.classes == ["eight", "five", "four"]
    with pytest.raises(EpisodeError, match="with 4 ways the most shots\\+queries is 11"):
        ClassEpisodeSampler(sc, ways=4, shots=5, queries=10, too_few="drop")
    with pytest.raises(EpisodeError, match="not in the store"):
        ClassEpisodeSampler(sc, 2, 1, 1, labels=["bed", "banana"])


def test_no_speaker_qualifies(fsdd: FeatureStore, sc: FeatureStore) -> None:
    with pytest.raises(EpisodeError) as info:
        SpeakerEpisodeSampler(fsdd, ways=3, shots=30, queries=30)
    msg = str(info.value)
    assert "at least shots+queries = 60" in msg and "best: speaker" in msg
    assert "most shots+queries any speaker allows is 50" in msg
    with pytest.raises(EpisodeError, match="no speaker said 5 words"):
        SpeakerEpisodeSampler(sc, ways=5, shots=1, queries=1)


def test_augment_hook(fsdd: FeatureStore) -> None:
    calls = []

    def add_noise(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x + torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))

    plain = ClassEpisodeSampler(fsdd, 3, 2, 2, seed=4).sample(2, 0)
    aug = ClassEpisodeSampler(fsdd, 3, 2, 2, seed=4, augment=add_noise)
    b = aug.sample(2, 0)
    assert calls == [(6, 40, 101)] * 4  # support and query of each task
    assert b.support_x.shape == plain.support_x.shape
    assert not torch.equal(b.support_x, plain.support_x)
    assert torch.equal(b.support_y, plain.support_y) and b.classes == plain.classes
    assert _same(b, aug.sample(2, 0))


def test_argument_checks(fsdd: FeatureStore) -> None:
    with pytest.raises(ValueError, match="shots must be a positive integer"):
        ClassEpisodeSampler(fsdd, 2, 0, 1)
    with pytest.raises(EpisodeError, match="need 7 classes"):
        ClassEpisodeSampler(fsdd, 7, 1, 1)
    with pytest.raises(ValueError, match="meta_batch"):
        ClassEpisodeSampler(fsdd, 2, 1, 1).sample(0)
    sub = ClassEpisodeSampler(fsdd, 2, 1, 1, labels=["0", "4"]).sample(10, 0)
    assert all(sorted(c) == ["0", "4"] for c in sub.classes)


def test_mixture_checks_its_parts(fsdd: FeatureStore) -> None:
    from metavox.data.episodes import MixtureSampler

    one = ClassEpisodeSampler(fsdd, ways=3, shots=1, queries=2, seed=0)
    other = ClassEpisodeSampler(fsdd, ways=3, shots=1, queries=2, seed=1)
    mixed = MixtureSampler([one, other], [1.0, 0.0], seed=0)
    assert all(mixed.source(i) == 0 for i in range(50))  # weight 0: never drawn
    assert _same(mixed.sample(3, 2), one.sample(3, 2))  # a part's own episodes, unchanged
    with pytest.raises(ValueError, match="disagree on"):
        MixtureSampler([one, ClassEpisodeSampler(fsdd, ways=3, shots=2, queries=2, seed=0)],
                       [1, 1], seed=0)
    with pytest.raises(ValueError, match="one weight per sampler"):
        MixtureSampler([one, other], [1.0], seed=0)
    with pytest.raises(ValueError, match="not all 0"):
        MixtureSampler([one, other], [0.0, 0.0], seed=0)
