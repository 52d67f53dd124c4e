"""Tiny corpora and configs for training tests: a manifest over a slice of the real FSDD,
or over generated tones (no data folder needed)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from metavox.pipeline.config import config_from_dict


def speech_commands_words(shared_data: Path, root: Path, words, per: int = 2):
    """A Speech Commands corpus of its own under ``root``: the first ``per`` real clips of
    each of ``words``."""
    from metavox.data import Corpus

    for word in words:
        (root / word).mkdir()
        for f in sorted((shared_data / "speech_commands_v2_test" / word).glob("*.flac"))[:per]:
            shutil.copy(f, root / word / f.name)
    return Corpus.from_preset("speech-commands", root)


def tone(n: int, rate: int, freq: float = 440.0) -> np.ndarray:
    """``n`` samples of a sine at ``freq`` Hz (amplitude 0.3), float32."""
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def fsdd_manifest(shared_data: Path, out: Path, digits=range(8), speakers=("jackson", "theo"),
                  per=6) -> Path:
    """A CSV manifest of `per` clips per (digit, speaker) from the shared FSDD."""
    rows = []
    for d in digits:
        for s in speakers:
            for i in range(per):
                rows.append((str(shared_data / "fsdd" / "recordings" / f"{d}_{s}_{i}.wav"),
                             str(d), s))
    return _write_manifest(out, rows)


def tone_manifest(out: Path, labels=range(8), speakers=("a", "b"), per=6,
                  seconds: float = 0.5) -> Path:
    """A CSV manifest (as :func:`fsdd_manifest`) over generated clips: class ``d`` is a tone
    near ``300 + 150 d`` Hz, each clip detuned and noised by a seeded generator."""
    rng = np.random.default_rng(0)
    rate = 16000
    rows = []
    for d in labels:
        for s in speakers:
            for i in range(per):
                path = out / "clips" / f"{d}_{s}_{i}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                freq = 300 + 150 * int(d) + rng.uniform(-20, 20)
                noise = 0.05 * rng.standard_normal(int(seconds * rate))
                sf.write(path, tone(int(seconds * rate), rate, freq) + noise, rate)
                rows.append((str(path), str(d), s))
    return _write_manifest(out, rows)


def _write_manifest(out: Path, rows: list[tuple[str, str, str]]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "speaker"])
        w.writerows(rows)
    return path


def tiny_config(manifest: Path, out: Path, cache: Path, **overrides):
    data = {
        "seed": 3,
        "out": str(out),
        "data": {"corpus": str(manifest), "split": "class", "test_labels": ["6", "7"],
                 "val_labels": ["4", "5"], "cache_dir": str(cache)},
        "frontend": {"n_mels": 20, "duration": 0.5},
        "episodes": {"ways": 2, "shots": 1, "queries": 2, "meta_batch": 2},
        "model": {"name": "conv4", "options": {"channels": 4}},
        "algorithm": {"name": "maml", "steps": 1, "eval_steps": 2, "inner_lr": 0.3},
        "optim": {"iterations": 6, "warmup": 2, "lr": 0.01},
        "validation": {"every": 3, "episodes": 4, "checkpoint_every": 3},
        "evaluation": {"episodes": 6, "shots": [1], "queries": 2, "max_steps": 2},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[section] = value
    return config_from_dict(data)


def enroll_digits_and_reload(shared_data: Path, tmp_path: Path):
    """Enroll FSDD digits 3 and 5 (two recordings of one speaker each) on the run in
    ``tmp_path / "run"``, save the learner and load it back; both must name a held-out
    recording alike. Returns ``(loaded run, adapted, reloaded, saved path)``."""
    import pytest

    from metavox.pipeline.enroll import enroll, load_adapted, save_adapted
    from metavox.pipeline.train import load_trained

    recordings = shared_data / "fsdd" / "recordings"
    words = tmp_path / "words"
    for digit in ("3", "5"):
        (words / digit).mkdir(parents=True)
        for i in range(2):
            (words / digit / f"{i}.wav").write_bytes(
                (recordings / f"{digit}_theo_{10 + i}.wav").read_bytes())
    loaded = load_trained(tmp_path / "run")
    adapted = enroll(loaded, words)
    path = save_adapted(tmp_path / "words.safetensors", adapted, loaded)
    again = load_adapted(path)
    (w1, p1), = adapted.predict_files([recordings / "3_theo_20.wav"])
    (w2, p2), = again.predict_files([recordings / "3_theo_20.wav"])
    assert w1 == w2 and p1 == pytest.approx(p2, abs=1e-5)
    return loaded, adapted, again, path


def assert_onnx_answers_as_pytorch(adapted, onnx_path: Path, shared_data: Path,
                                   seconds: float) -> None:
    """The exported graph at ``onnx_path`` takes any batch of ``seconds``-long clips and
    answers as the adapted model's PyTorch module does."""
    import onnxruntime as ort
    import torch

    from metavox.audio.io import load_clip
    from metavox.kws.export import ClipSpotter

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", int(16000 * seconds)]
    recordings = shared_data / "fsdd" / "recordings"
    clips = np.stack([load_clip(recordings / f"{d}_theo_{i}.wav", 16000, seconds)
                      for d in "35" for i in (20, 21)])
    spotter = ClipSpotter(adapted).eval()
    for x in (clips[:1], clips[1:]):
        got = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
        with torch.no_grad():
            want = spotter(torch.from_numpy(x).float())
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5)
