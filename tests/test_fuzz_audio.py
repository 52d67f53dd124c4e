"""A fuzzed corpus made in the test: malformed, odd and good audio files side by side.
Every command that reads audio (`metavox data scan`, `train`, `evaluate`, `adapt`,
`predict`) finishes over it without a traceback, names every bad file once with a reason,
and uses every good one."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import soundfile as sf
from train_helpers import tiny_config, tone, tone_manifest
from typer.testing import CliRunner

from metavox.cli import app

runner = CliRunner()

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
    put("up", "an hour.flac", lambda p: sf.write(p, np.zeros(3600 * 16000, np.int16),
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


@pytest.fixture(scope="module")
def tone_run(tmp_path_factory):
    """A tiny 3-way MAML run on generated tones (the fuzzed corpus has 3 words)."""
    from metavox.pipeline.train import train

    root = tmp_path_factory.mktemp("tone_run")
    manifest = tone_manifest(root / "data", labels=range(10))
    cfg = tiny_config(manifest, root / "run", root / "cache",
                      data={"corpus": str(manifest), "split": "class", "cache_dir":
                            str(root / "cache"), "test_labels": ["7", "8", "9"],
                            "val_labels": ["4", "5", "6"]},
                      episodes={"ways": 3, "shots": 1, "queries": 1, "meta_batch": 1},
                      optim={"iterations": 2, "warmup": 1},
                      validation={"every": 2, "episodes": 0, "checkpoint_every": 2})
    train(cfg, progress=False)
    return root / "run"


def finished(res, code: int = 0) -> None:
    """The command ended by itself with status ``code``: no exception, no traceback."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output


def named_once(output: str, names: set[str]) -> dict[str, str]:
    """The one line of ``output`` naming each of ``names`` (asserting there is exactly one,
    with a reason after the name)."""
    lines = {}
    for name in names:
        found = [ln for ln in output.splitlines() if name in ln]
        assert len(found) == 1, (name, found)
        assert found[0].split(name, 1)[1].lstrip(": ").strip(), found[0]  # a reason follows
        lines[name] = found[0]
    return lines


def test_evaluate_on_the_fuzzed_corpus_uses_every_good_clip(fuzz, tone_run, tmp_path):
    """`metavox evaluate --data` over the fuzzed corpus: each undecodable clip is named on
    one warning line with its reason, every good one is in the test episodes' store."""
    from metavox.data import FeatureCache, load_corpus
    from metavox.pipeline.train import load_trained

    root, good, bad = fuzz
    res = runner.invoke(app, ["evaluate", str(tone_run), "--data", "{label}/{_}.wav",
                              "--root", str(root), "--baselines", "", "--episodes", "2",
                              "--max-steps", "0", "--no-progress", "--json",
                              "--report", str(tmp_path / "report")])
    finished(res)
    lines = named_once(res.stderr, bad)
    assert all(ln.startswith("  ") for ln in lines.values())  # listed under one warning
    assert f"warning: {len(bad)} of {len(good) + len(bad)} clips" in res.stderr
    report = json.loads(res.stdout)
    assert report["labels"] == ["no", "up", "yes"] and report["scores"][0]["episodes"] == 2
    cache = FeatureCache(tone_run.parent / "cache", load_trained(tone_run).frontend)
    store = cache.load(load_corpus("{label}/{_}.wav", str(root)))
    assert len(store) == len(good) and sorted(f["path"] for f in store.failures) == sorted(bad)


@pytest.fixture(scope="module")
def adapted(fuzz, tone_run, tmp_path_factory):
    """`metavox adapt` with the fuzzed corpus as the examples folder (3 words)."""
    out = tmp_path_factory.mktemp("adapted") / "words.safetensors"
    res = runner.invoke(app, ["adapt", str(tone_run), "--examples", str(fuzz[0]),
                              "--out", str(out)])
    return res, out


def test_adapt_on_fuzzed_examples_uses_every_good_clip(fuzz, tone_run, adapted):
    """Each unreadable example (and the directory named .wav) is named on one warning line
    with its reason; every readable one is enrolled."""
    from metavox.pipeline.enroll import read_examples
    from metavox.pipeline.train import load_trained

    root, good, bad = fuzz
    res, out = adapted
    finished(res)
    assert "adapted to 3 words (no, up, yes)" in res.stdout and out.is_file()
    named_once(res.stderr, bad | {"yes/dir.wav"})
    assert res.stderr.count("warning: ") == len(bad) + 1
    with pytest.warns(UserWarning):
        x, y, words = read_examples(root, load_trained(tone_run).frontend)
    counts = {w: int((y == i).sum()) for i, w in enumerate(words)}
    assert counts == {w: sum(g.startswith(f"{w}/") for g in good) for w in words}


def test_predict_on_fuzzed_files_classifies_every_good_one(fuzz, adapted, tmp_path):
    """`metavox predict` given every fuzzed file, a directory named .wav, a symlink loop
    and a missing file: one JSON line per input in order, a word for each good file, the
    reason for each bad one, exit status 1; without --json the bad ones are named on
    stderr, once each."""
    root, good, bad = fuzz
    loop = tmp_path / "loop.wav"
    os.symlink(loop, loop)
    extra = {"dir": root / "yes" / "dir.wav", "loop": loop, "missing": tmp_path / "gone.wav"}
    files = [root / n for n in sorted(good | bad)] + list(extra.values())
    res = runner.invoke(app, ["predict", str(adapted[1]), *map(str, files), "--json"])
    finished(res, 1)
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["file"] for x in lines] == [str(f) for f in files]
    for f, x in zip(sorted(good | bad), lines, strict=False):
        if f in good:
            assert x["word"] in ("no", "up", "yes", "unknown") and len(x["probabilities"]) == 3
        else:
            assert x["error"] and "word" not in x, x
    reasons = {k: x["error"] for k, x in zip(extra, lines[-3:], strict=True)}
    assert reasons == {"dir": "not a regular file", "loop": "no such file",
                       "missing": "no such file"}
    res = runner.invoke(app, ["predict", str(adapted[1]), *map(str, files)])
    finished(res, 1)
    assert res.stdout.count("│ /") >= len(good)  # a table row for each good file
    named_once(res.stderr, bad | {"yes/dir.wav", "loop.wav", "gone.wav"})
    assert res.stderr.count("error: ") == len(bad) + 3


def permissions_bind(folder) -> bool:
    """Whether this process is refused a file without read permission (root, or anyone
    with CAP_DAC_OVERRIDE, reads it anyway)."""
    probe = folder / "probe"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        probe.read_bytes()
    except PermissionError:
        return True
    finally:
        probe.unlink()
    return False


def test_an_unreadable_file_is_named_by_every_command(fuzz, tone_run, adapted, tmp_path):
    """A clip without read permission: `data scan` lists it with its reason, the feature
    cache leaves it out, `predict` names it and classifies the rest."""
    from metavox.audio.features import FrontendConfig
    from metavox.data import build_feature_store, load_corpus

    if not permissions_bind(tmp_path):
        pytest.skip("this process reads files whatever their permissions (root: euid "
                    f"{os.geteuid()}): an unreadable file cannot be made here")

    root = tmp_path / "corpus"
    for i, word in enumerate(["yes", "yes", "no", "no"]):
        (root / word).mkdir(parents=True, exist_ok=True)
        sf.write(root / word / f"c{i}.wav", tone(8000, 16000, 300 + 100 * i), 16000)
    locked = root / "no" / "c3.wav"
    locked.chmod(0)
    res = runner.invoke(app, ["data", "scan", str(root), "--pattern", "{label}/{_}.wav",
                              "--json"])
    finished(res)
    assert [u["path"] for u in json.loads(res.stdout)["unreadable"]] == ["no/c3.wav"]
    with pytest.warns(UserWarning, match="1 of 4 clips"):
        store = build_feature_store(load_corpus("{label}/{_}.wav", str(root)),
                                    FrontendConfig(n_mels=20, duration=0.5), tmp_path / "cache")
    assert len(store) == 3 and [f["path"] for f in store.failures] == ["no/c3.wav"]
    files = sorted(root.glob("*/*.wav"))
    res = runner.invoke(app, ["predict", str(adapted[1]), *map(str, files), "--json"])
    finished(res, 1)
    errors = [x for x in map(json.loads, res.stdout.splitlines()) if "error" in x]
    assert [x["file"] for x in errors] == [str(locked)] and errors[0]["error"]
