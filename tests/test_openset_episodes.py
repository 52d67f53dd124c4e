"""Open-set episodes for meta-training: unknown words only among the queries, hard
negatives drawn as specified, backgrounds, deterministic by seed, config keys checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metavox.data.cache import write_feature_store
from metavox.data.episodes import (
    UNKNOWN,
    ClassEpisodeSampler,
    EpisodeError,
    OpenSetEpisodeSampler,
    centroid_neighbours,
)
from metavox.pipeline.config import ConfigError, config_from_dict


def _pairs(tmp_path, pairs: int = 5, clips: int = 10, dim: int = 24):
    """Words in pairs that sound alike: word ``a{i}`` and ``b{i}`` share a direction
    (cosine ~0.9), the pairs are orthogonal to each other."""
    rng = np.random.default_rng(0)
    xs, labels = [], []
    for i in range(pairs):
        base = np.eye(dim)[2 * i] * 4.0
        for name, off in ((f"a{i}", 0.0), (f"b{i}", 2.0)):
            centre = base + off * np.eye(dim)[2 * i + 1]
            xs.append(centre + 0.1 * rng.standard_normal((clips, dim)))
            labels += [name] * clips
    x = np.concatenate(xs)[:, None, :].astype(np.float32)
    speakers = [f"s{j % 4}" for j in range(len(labels))]
    return write_feature_store(tmp_path / "store", x, labels, speakers)


def _label_of(store, x: torch.Tensor) -> str:
    """The store's label of the clip whose features are ``x``."""
    allx = torch.from_numpy(store.take(np.arange(len(store))))
    hit = (allx == x).flatten(1).all(1).nonzero().flatten()
    return store.labels[int(hit[0])]


def test_neighbours_are_the_sound_alike_words(tmp_path) -> None:
    store = _pairs(tmp_path)
    table = centroid_neighbours(store)
    for i in range(5):
        assert table[f"a{i}"][0] == f"b{i}" and table[f"b{i}"][0] == f"a{i}"
        assert len(table[f"a{i}"]) == 9


def test_unknowns_only_among_queries_and_hard(tmp_path) -> None:
    store = _pairs(tmp_path)
    bg = np.full((4, 1, 24), -3.0, dtype=np.float32)
    s = OpenSetEpisodeSampler(store, ways=2, shots=2, queries=3, unknown_words=2,
                              unknown_queries=2, backgrounds=bg, background_queries=3,
                              hard_negatives=1.0, hard_pool=1, seed=5)
    plain = ClassEpisodeSampler(store, ways=2, shots=2, queries=3, seed=5)
    b = s.sample(meta_batch=6, index=0)
    ref = plain.sample(meta_batch=6, index=0)
    # the support and the known queries are exactly the closed-set sampler's
    assert torch.equal(b.support_x, ref.support_x) and b.classes == ref.classes
    assert torch.equal(b.query_x[:, :6], ref.query_x) and b.query_x.shape == (6, 13, 1, 1, 24)
    assert b.query_y[:, 6:].eq(UNKNOWN).all() and b.has_unknowns and not ref.has_unknowns
    hard_seen = 0
    for t in range(6):
        enrolled = set(b.classes[t])
        unknown = b.unknown_words[t]
        assert len(unknown) == 2 and not enrolled & set(unknown)
        # the unknown clips really are those words, and none is in the support
        got = {_label_of(store, b.query_x[t, 6 + j, 0]) for j in range(4)}
        assert got == set(unknown)
        assert not got & {_label_of(store, x[0]) for x in b.support_x[t]}
        assert b.query_x[t, 10:].eq(-3.0).all()  # the backgrounds
        # hard_negatives = 1, hard_pool = 1: each unknown word is the partner of an
        # enrolled word while one is left (a{i} <-> b{i})
        partners = {("b" if w[0] == "a" else "a") + w[1:] for w in enrolled} - enrolled
        hard_seen += len(set(unknown) & partners)
        assert len(set(unknown) & partners) == min(2, len(partners))
    assert hard_seen > 0


def test_confusable_table_and_no_hard_negatives(tmp_path) -> None:
    store = _pairs(tmp_path)
    conf = {w: ["a4"] for w in store.label_names if w not in ("a4", "b4")}
    s = OpenSetEpisodeSampler(store, 2, 1, 1, unknown_words=1, unknown_queries=1,
                              hard_negatives=1.0, hard_pool=0, confusable=conf, seed=1)
    for i in range(20):
        _, _, names, _, unknown, _ = s.open_rows(i)
        if "a4" not in names:  # the listed near-homophone, whenever it is free
            assert unknown == ["a4"]
    # hard_negatives = 0: any other word, so the enrolled words' partners are a minority
    easy = OpenSetEpisodeSampler(store, 2, 1, 1, unknown_words=1, unknown_queries=1,
                                 hard_negatives=0.0, seed=1)
    partner = 0
    for i in range(60):
        _, _, names, _, unknown, _ = easy.open_rows(i)
        partner += unknown[0][1:] in {n[1:] for n in names}
    assert 0 < partner < 30


def test_deterministic_by_seed(tmp_path) -> None:
    store = _pairs(tmp_path)
    make = lambda seed: OpenSetEpisodeSampler(store, 3, 1, 2, unknown_words=2,  # noqa: E731
                                              unknown_queries=3, seed=seed)
    a, b, c = make(7).sample(4, 2), make(7).sample(4, 2), make(8).sample(4, 2)
    assert torch.equal(a.query_x, b.query_x) and a.unknown_words == b.unknown_words
    assert not torch.equal(a.query_x, c.query_x)
    assert torch.equal(make(7).sample_range(9, 1).query_x, a.query_x[1:2])


def test_bad_settings_are_clear_errors(tmp_path) -> None:
    store = _pairs(tmp_path)
    with pytest.raises(EpisodeError, match="unknown_words"):
        OpenSetEpisodeSampler(store, 5, 1, 1, unknown_words=6)
    with pytest.raises(EpisodeError, match="background"):
        OpenSetEpisodeSampler(store, 2, 1, 1, background_queries=2)
    with pytest.raises(ValueError, match="hard_negatives"):
        OpenSetEpisodeSampler(store, 2, 1, 1, hard_negatives=1.5)
    base = {"algorithm": {"name": "protoreject"}, "episodes": {"unknown_words": 2}}
    assert config_from_dict(base).episodes.unknown_words == 2
    with pytest.raises(ConfigError, match="episodes.hard_negatives"):
        config_from_dict({**base, "episodes": {"unknown_words": 2, "hard_negatives": 2.0}})
    with pytest.raises(ConfigError, match="algorithm.cohort"):
        config_from_dict({"algorithm": {"name": "maml", "cohort": 5}})
    with pytest.raises(ConfigError, match="select_metric"):
        config_from_dict({"validation": {"select_metric": "auc"}})
    with pytest.raises(ConfigError, match="unknown_wordz"):
        config_from_dict({"episodes": {"unknown_wordz": 2}})


def test_only_rejecting_algorithms_train_on_unknowns() -> None:
    """A rejecting run's config gives protoreject open-set episodes; the ProtoNet baseline
    an evaluation trains from the same config gets the closed-set tasks."""
    from metavox.pipeline.build import open_set_training

    cfg = config_from_dict({"algorithm": {"name": "protoreject"},
                            "episodes": {"unknown_words": 2}})
    assert open_set_training(cfg)
    cfg = config_from_dict({"algorithm": {"name": "protonet"},
                            "episodes": {"unknown_words": 2}})
    assert not open_set_training(cfg)
    assert not open_set_training(config_from_dict({"algorithm": {"name": "protoreject"}}))


def test_open_set_training_and_selection_end_to_end(tmp_path) -> None:
    """A tiny protoreject run on open-set episodes (unknown words, backgrounds, a cohort)
    whose adaptation settings and checkpoint are chosen on open-set validation."""
    import json

    from train_helpers import tiny_config, tone_manifest

    from metavox.pipeline.train import load_trained, train

    manifest = tone_manifest(tmp_path / "tones", labels=range(10))
    cfg = tiny_config(manifest, tmp_path / "run", tmp_path / "cache",
                      data__test_labels=["8", "9"], data__val_labels=["4", "5", "6", "7"],
                      episodes__unknown_words=1, episodes__unknown_queries=2,
                      episodes__background_queries=2,
                      algorithm={"name": "protoreject", "steps": 1, "inner_lr": 0.3,
                                 "cohort": 4},
                      validation__select_metric="open_set",
                      validation__select_eval_steps=[0, 1])
    result = train(cfg, progress=False)
    table = json.loads((tmp_path / "run" / "selection.json").read_text())["table"]
    assert sorted((r["checkpoint"], r["eval_steps"]) for r in table) == \
        [("best", 0), ("best", 1), ("latest", 0), ("latest", 1)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in table)
    best = max(table, key=lambda r: r["accuracy"])
    assert result.selection.eval_steps == best["eval_steps"]
    loaded = load_trained(tmp_path / "run")
    assert loaded.meta["adaptation"]["metric"] == "open_set"
    assert loaded.algo.eval_steps == best["eval_steps"]
    assert loaded.algo.cohort_x.shape[0] == 4  # the cohort travels in the checkpoint
