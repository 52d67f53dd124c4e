"""A fuzzed corpus made in the test: malformed, odd and good audio files side by side.
`metavox data scan` and a training run over it finish without a traceback, name every
bad file once with a reason, and use every good one."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import soundfile as sf
from train_helpers import tone
from typer.testing import CliRunner

from metavox.cli import app

RATES = [4000, 8000, 11025, 16000, 22050, 44100, 48000, 96000]


def wav_header(frames_claimed: int, rate: int = 16000) -> bytes:
    data = frames_claimed * 2
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1,
                       rate, 2 * rate, 2, 16, b"data", data)


def make_corpus(root) -> tuple[set[str], set[str]]:
    """Files ``{label}/{name}.wav`` under ``root``: (good names, bad names) relative."""
    good, bad = set(), set()

    def put(label: str, name: str, write, ok: bool) -> None:
        path = root / label / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        (good if ok else bad).add(f"{label}/{name}")

    # good: every rate, subtypes, channels, lengths, names with spaces and odd bytes
    for rate in RATES:
        put("yes", f"rate_{rate}.wav", lambda p, r=rate: sf.write(p, tone(r // 2, r), r), True)
    for sub in ("PCM_U8", "PCM_24", "FLOAT", "PCM_32"):
        put("no", f"sub_{sub}.wav", lambda p, s=sub: sf.write(p, tone(8000, 16000), 16000,
                                                               subtype=s), True)
    put("no", "stereo.wav", lambda p: sf.write(p, np.stack([tone(8000, 16000)] * 2, 1),
                                              16000), True)
    put("no", "six channels.wav", lambda p: sf.write(p, np.stack([tone(8000, 16000)] * 6, 1),
                                                    16000), True)
    put("yes", "one_sample.wav", lambda p: sf.write(p, np.array([0.1], np.float32), 16000),
        True)
    put("yes", "silence.wav", lambda p: sf.write(p, np.zeros(16000, np.float32), 16000), True)
    put("yes", "an hour.flac", lambda p: sf.write(p, np.zeros(3600 * 16000, np.int16),
                                                  16000), True)
    weird = os.fsdecode(b"weird\xff name.wav")
    put("no", weird, lambda p: sf.write(os.fsencode(p), tone(8000, 16000), 16000), True)
    # bad: empty, truncated, lying header, garbage, text, NaN samples, a directory
    put("yes", "empty.wav", lambda p: p.write_bytes(b""), False)
    put("yes", "truncated_header.wav", lambda p: p.write_bytes(wav_header(100)[:20]), False)
    put("yes", "lying_header.wav", lambda p: p.write_bytes(wav_header(16000) + b"\0" * 64),
        False)
    put("no", "garbage.wav", lambda p: p.write_bytes(os.urandom(3000)), False)
    put("no", "text.wav", lambda p: p.write_text("this is not audio\n" * 50), False)
    put("no", "nan.wav", lambda p: sf.write(p, np.full(8000, np.nan, np.float32), 16000,
                                            subtype="FLOAT"), False)
    for i in range(4):  # a third word, so that a run has classes to hold out
        put("up", f"up_{i}.wav", lambda p, i=i: sf.write(p, tone(8000 + 500 * i, 16000),
                                                          16000), True)
    return good, bad


#: bad files a header cannot tell from good ones: only decoding finds them
DECODE_ONLY = {"no/nan.wav"}


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    good, bad = make_corpus(root)
    (root / "yes" / "dir.wav").mkdir()  # a folder with an audio name: not a clip at all
    loop = root / "no" / "loop"
    loop.mkdir()
    os.symlink(loop, loop / "again")  # a symlink loop under the corpus
    return root, good, bad


def test_scan_names_every_bad_file_once_and_counts_the_good(fuzz):
    root, good, bad = fuzz
    res = CliRunner().invoke(app, ["data", "scan", str(root), "--pattern", "{label}/{_}.wav",
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    report = json.loads(res.output)
    unreadable = [u["path"] for u in report["unreadable"]]
    assert sorted(unreadable) == sorted(bad - DECODE_ONLY)  # each once, with a reason
    assert all(u["reason"] for u in report["unreadable"])
    assert report["clips"] == len(good) + len(bad)  # the pattern's .wav takes .flac too
    assert report["sample_rates"]["96000"] == 1 and report["channels"]["6"] == 1


def test_training_on_the_fuzzed_corpus_uses_every_good_clip(fuzz, tmp_path):
    """Decoding (the feature cache) finds the rest: every bad file is left out once with
    its reason, every good one (any rate, depth, channel count, length) is kept, and a
    run trains on them."""
    from metavox.audio.features import FrontendConfig
    from metavox.data import build_feature_store, load_corpus

    root, good, bad = fuzz
    corpus = load_corpus("{label}/{_}.wav", str(root))
    with pytest.warns(UserWarning, match=f"{len(bad)} of {len(good) + len(bad)} clips"):
        store = build_feature_store(corpus, FrontendConfig(n_mels=20, duration=0.5),
                                    tmp_path / "cache")
    assert sorted(f["path"] for f in store.failures) == sorted(bad)
    assert len(store) == len(good) and np.isfinite(store.take(np.arange(len(store)))).all()
    res = CliRunner().invoke(app, [
        "train", "--no-progress", "--set", 'data.corpus="{label}/{_}.wav"',
        "--set", f'data.root="{root}"', "--set", 'data.test_labels=["up"]',
        "--set", "data.val_fraction=0.0", "--set", f'data.cache_dir="{tmp_path / "cache"}"',
        "--set", "frontend={n_mels = 20, duration = 0.5}",
        "--set", "episodes={ways = 2, shots = 1, queries = 1, meta_batch = 1}",
        "--set", "model.options={channels = 4}", "--set", "optim.iterations=2",
        "--set", "optim.warmup=1", "--set", "validation.episodes=0",
        "--set", f'out="{tmp_path / "run"}"'])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and (tmp_path / "run" / "best.safetensors").is_file()
