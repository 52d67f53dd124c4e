"""Feature cache: build once, reuse without decoding, rebuild on change, never in the data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from data_paths import SHARED_DATA

import metavox.audio.io as audio_io
from metavox.audio.features import FrontendConfig, build_frontend
from metavox.data.cache import FeatureCache, FeatureStore, build_feature_store, default_cache_dir
from metavox.data.corpus import Corpus

DATA = SHARED_DATA
FSDD = DATA / "fsdd"


@pytest.fixture(scope="module")
def small(shared_data) -> Corpus:
    """200 real FSDD clips: digits 0 and 1 by two speakers."""
    return Corpus.from_preset("fsdd", FSDD).filter(labels=["0", "1"], speakers=["george", "theo"])


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def store(small: Corpus, cache_dir: Path) -> FeatureStore:
    return build_feature_store(small, FrontendConfig(), cache_dir, workers=2)


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("audio was decoded")

    monkeypatch.setattr(audio_io, "load_clip", boom)
    monkeypatch.setattr(audio_io, "load_audio", boom)


def _tmp_corpus(root: Path, n: int = 3) -> Corpus:
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / ("yes" if i % 2 else "no") / f"s{i}_nohash_0.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * rng.standard_normal(8000), 16000)
    return Corpus.from_preset("speech-commands", root)


def test_build_shapes_and_lookups(store: FeatureStore, small: Corpus) -> None:
    assert store.shape == (200, 40, 101) and len(store) == 200
    assert isinstance(store.features, np.memmap) and isinstance(store[0], np.memmap)
    assert store.features.dtype == np.float32
    assert store.labels == tuple(u.label for u in small)
    assert store.speakers == tuple(u.speaker for u in small)
    assert store.label_names == ["0", "1"] and store.speaker_names == ["george", "theo"]
    by = store.by_label()
    assert [len(v) for v in by.values()] == [100, 100]
    assert all(store.labels[i] == "1" for i in by["1"])
    assert list(store.indices(label="0", speaker="theo")) == \
        [i for i, u in enumerate(small) if u.label == "0" and u.speaker == "theo"]
    assert store.failures == [] and store.fingerprint() == small.fingerprint()
    assert store.config == FrontendConfig()


def test_features_match_the_front_end(store: FeatureStore) -> None:
    u = store.utterances[17]
    wave = audio_io.load_clip(u.path, 16000, 1.0)
    with torch.inference_mode():
        ref = build_frontend(FrontendConfig())(torch.from_numpy(wave)[None])[0].numpy()
    np.testing.assert_allclose(store[17], ref, rtol=1e-4, atol=1e-4)


def test_second_load_does_not_decode(
    store: FeatureStore, small: Corpus, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_decoding(monkeypatch)
    again = build_feature_store(small, FrontendConfig(), cache_dir)
    assert again.path == store.path
    np.testing.assert_array_equal(again.take([0, 5, 199]), store.take([0, 5, 199]))
    assert FeatureCache(cache_dir).load(small) is not None


def test_rebuild_when_config_or_files_change(
    store: FeatureStore, small: Corpus, cache_dir: Path
) -> None:
    other = build_feature_store(small, FrontendConfig(n_mels=24), cache_dir, workers=0)
    assert other.path != store.path and other.shape == (200, 24, 101)
    fewer = small.filter(speakers=["theo"])
    sub = build_feature_store(fewer, FrontendConfig(), cache_dir, workers=0)
    assert sub.path != store.path and len(sub) == 100
    np.testing.assert_array_equal(sub.take([0]), store.take([store.speakers.index("theo")]))
    half = build_feature_store(small, FrontendConfig(), cache_dir, dtype="float16", workers=0)
    assert half.features.dtype == np.float16 and half.path != store.path
    np.testing.assert_allclose(half.take(range(10)), store.take(range(10)), atol=0.02)


def test_rebuild_when_a_file_is_rewritten(tmp_path: Path) -> None:
    corpus = _tmp_corpus(tmp_path / "data")
    cache = FeatureCache(tmp_path / "cache", workers=0)
    first = cache.get(corpus)
    path = Path(corpus[0].path)
    sf.write(path, np.zeros(16000), 16000)
    changed = Corpus.from_preset("speech-commands", tmp_path / "data")
    assert cache.load(changed) is None
    second = cache.get(changed)
    assert second.path != first.path
    assert not np.array_equal(second[0], first[0])


def test_data_folder_untouched(shared_data, store: FeatureStore) -> None:
    recordings = FSDD / "recordings"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in recordings.iterdir())
    dir_mtime = recordings.stat().st_mtime_ns
    assert FSDD not in store.path.parents
    assert sorted((p.name, p.stat().st_mtime_ns) for p in recordings.iterdir()) == before
    assert recordings.stat().st_mtime_ns == dir_mtime
    assert sorted(p.name for p in FSDD.iterdir()) == \
        ["UPSTREAM_README.md", "recordings", "speakers.csv"]


def test_cache_inside_the_data_is_refused(tmp_path: Path) -> None:
    corpus = _tmp_corpus(tmp_path / "data")
    with pytest.raises(ValueError, match="inside the data folder"):
        build_feature_store(corpus, cache_dir=tmp_path / "data" / "cache")
    assert not (tmp_path / "data" / "cache").exists()


def test_bad_file_skipped_and_counted(tmp_path: Path) -> None:
    corpus_root = tmp_path / "data"
    _tmp_corpus(corpus_root, n=4)
    (corpus_root / "yes" / "zz_nohash_0.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    corpus = Corpus.from_preset("speech-commands", corpus_root)
    assert len(corpus) == 5
    with pytest.warns(UserWarning, match="1 of 5 clips"):
        store = build_feature_store(corpus, cache_dir=tmp_path / "cache", workers=0)
    assert len(store) == 4 and store.shape == (4, 40, 101)
    assert [f["path"] for f in store.failures] == ["yes/zz_nohash_0.wav"]
    assert store.failures[0]["reason"]
    assert all(not u.path.endswith("zz_nohash_0.wav") for u in store.utterances)
    with pytest.raises(audio_io.AudioError):
        build_feature_store(corpus, cache_dir=tmp_path / "c2", workers=0, on_error="raise")


def test_interrupted_build_leaves_no_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = _tmp_corpus(tmp_path / "data", n=5)
    real = audio_io.load_clip
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(audio_io, "load_clip", flaky)
    cache = FeatureCache(tmp_path / "cache", workers=0)
    with pytest.raises(KeyboardInterrupt):
        cache.get(corpus)
    # nothing a reader could open: only the hidden folder of finished chunks (none yet:
    # the interrupted chunk's temporary file is gone)
    left = list((tmp_path / "cache").iterdir())
    assert all(p.name.startswith(".chunks-") for p in left)
    assert [p.name for p in left[0].iterdir()] == []
    assert cache.load(corpus) is None
    assert len(cache.get(corpus)) == 5
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.path(corpus).name]


def test_incomplete_entry_is_rebuilt(tmp_path: Path) -> None:
    corpus = _tmp_corpus(tmp_path / "data")
    cache = FeatureCache(tmp_path / "cache", workers=0)
    store = cache.get(corpus)
    (store.path / "index.json").unlink()
    with pytest.warns(UserWarning, match="rebuilding"):
        again = cache.get(corpus)
    assert len(again) == 3 and (again.path / "index.json").exists()


def test_filtered_view_and_pickle(store: FeatureStore) -> None:
    view = store.filter(labels=["1"], speakers=["theo"])
    assert len(view) == 50 and view.label_names == ["1"]
    rows = [i for i in range(len(store)) if store.labels[i] == "1" and store.speakers[i] == "theo"]
    np.testing.assert_array_equal(view.take([0, 49]), store.take([rows[0], rows[49]]))
    np.testing.assert_array_equal(view.features[3], store.features[rows[3]])
    clone = pickle.loads(pickle.dumps(view))
    assert len(pickle.dumps(view)) < 200_000  # by path, not by value
    np.testing.assert_array_equal(clone.take(range(50)), view.take(range(50)))


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METAVOX_CACHE", str(tmp_path / "mv"))
    assert default_cache_dir() == tmp_path / "mv" / "features"
    monkeypatch.delenv("METAVOX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "metavox" / "features"
    assert FeatureCache().cache_dir == tmp_path / "xdg" / "metavox" / "features"
