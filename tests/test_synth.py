"""The built-in synthetic corpus: vocabulary, speakers, planning, generation, CLI.

Generation tests use a tiny configuration (3 speakers x 3 words x 2 repetitions) and need the
optional extra ``metavox[synth]`` (eSpeak NG); they are skipped without it.
"""

from __future__ import annotations

import csv
import filecmp
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metavox.data.synth import (
    MANIFEST_COLUMNS,
    SPEAKERS,
    TEST_WORDS,
    TRAIN_WORDS,
    VAL_WORDS,
    WORDS,
    SynthError,
    corpus_complete,
    default_corpus_dir,
    ensure_default_corpus,
    plan_clip,
    select_speakers,
    synthesize_corpus,
)
from metavox.data.synth import generate as gen
from metavox.data.synth.engine import engine_available
from metavox.data.synth.vocabulary import check_words

needs_engine = pytest.mark.skipif(
    not engine_available(),
    reason="eSpeak NG is an optional extra: pip install 'metavox[synth]'",
)

TINY = {"speakers": ["s00", "s01", "s07"], "words": ["yes", "seven", "computer"], "reps": 2}


def _clips(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in (folder / "clips").rglob("*.wav"))


def _same_corpus(a: Path, b: Path) -> None:
    names = _clips(a)
    assert names == _clips(b)
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus, generated once with two workers."""
    if not engine_available():
        pytest.skip("eSpeak NG is an optional extra: pip install 'metavox[synth]'")
    out = tmp_path_factory.mktemp("synth") / "ref"
    result = synthesize_corpus(out, workers=2, seed=0, **TINY)
    assert result.n_clips == result.n_written == 18
    return out


# ----------------------------------------------------------------------------- no engine


def test_vocabulary_sizes_and_reserved_words() -> None:
    assert len(WORDS) >= 200 and len(set(WORDS)) == len(WORDS)
    assert check_words(WORDS) == WORDS
    for name in ("yes", "no", "stop", "go", "zero", "nine", "house", "eat"):
        assert name in WORDS
    test, val, train = set(TEST_WORDS), set(VAL_WORDS), set(TRAIN_WORDS)
    assert len(test) == 40 and len(val) == 24 and test | val | train == set(WORDS)
    assert not (test & val) and not (test & train) and not (val & train)


def test_speakers_curated_and_balanced() -> None:
    assert len(SPEAKERS) >= 60
    assert len({s.id for s in SPEAKERS}) == len(SPEAKERS)
    assert len({(s.accent, s.variant) for s in SPEAKERS}) == len(SPEAKERS)
    assert Counter(s.register for s in SPEAKERS) == {"low": 32, "high": 32}
    assert len({s.accent for s in SPEAKERS}) == 8
    banned = ("whisper", "robo", "Robot", "Ricishay", "Demonic", "croak", "caleb", "Tweaky")
    assert not [s for s in SPEAKERS if any(b in s.variant for b in banned)]
    for s in SPEAKERS:
        assert 0 <= s.pitch <= 100 and 0 <= s.pitch_range <= 100 and 80 <= s.rate <= 450
    # every block of 8 is 6 train + 1 val + 1 test, half low, half high
    for i in range(0, len(SPEAKERS), 8):
        block = SPEAKERS[i: i + 8]
        assert Counter(s.split for s in block) == {"train": 6, "val": 1, "test": 1}
        assert Counter(s.register for s in block) == {"low": 4, "high": 4}
    # held-out speakers use voices that no training speaker uses
    train_variants = {s.variant for s in SPEAKERS if s.split == "train"}
    assert not {s.variant for s in SPEAKERS if s.split != "train"} & train_variants
    assert select_speakers(8) == SPEAKERS[:8]


def _formant_factors(variant: str) -> tuple[int, ...]:
    import re

    loader = pytest.importorskip("espeakng_loader")
    factors = dict.fromkeys(range(1, 6), 100)
    text = (Path(loader.get_data_path()) / "voices" / "!v" / variant).read_text(errors="replace")
    for line in text.splitlines():
        m = re.match(r"\s*formant\s+([1-5])\s+(-?\d+)", line)
        if m:
            factors[int(m.group(1))] = int(m.group(2))
    return tuple(factors.values())


@needs_engine
def test_held_out_voices_differ_from_every_training_voice() -> None:
    """Each val/test variant differs from each training variant by >= 10 % in at least one
    of the formant frequencies F1-F5 set in eSpeak NG's voice files."""
    train = {s.variant for s in SPEAKERS if s.split == "train"}
    for held in {s.variant for s in SPEAKERS if s.split != "train"}:
        mine = _formant_factors(held)
        for other in train:
            gap = max(abs(a - b) for a, b in zip(mine, _formant_factors(other), strict=True))
            assert gap >= 10, (held, other, gap)


def test_plan_is_a_pure_function_of_seed_speaker_word_rep() -> None:
    s = SPEAKERS[3]
    a, b = plan_clip(s, "seven", 1, 0), plan_clip(s, "seven", 1, 0)
    assert a == b
    assert plan_clip(s, "seven", 1, 1) != a
    assert plan_clip(s, "seven", 2, 0).seed != a.seed
    assert plan_clip(SPEAKERS[4], "seven", 1, 0).seed != a.seed
    assert a.relpath == f"clips/seven/{s.id}_1.wav"
    for rep in range(20):
        p = plan_clip(s, "yes", rep, 0)
        assert abs(p.pitch - s.pitch) <= gen.PITCH_JITTER
        assert abs(p.rate / s.rate - 1) <= gen.RATE_JITTER + 0.01
        assert gen.GAIN_DB[0] <= p.gain_db <= gen.GAIN_DB[1]
        assert gen.SNR_DB[0] <= p.snr_db <= gen.SNR_DB[1]
        assert 0 <= p.offset_frac <= 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"words": []}, "empty"),
        ({"words": ["yes", " "]}, "empty entries"),
        ({"words": ["Yes"]}, "lower-case"),
        ({"words": ["yes", "yes"]}, "repeats"),
        ({"speakers": 0}, "between 1 and 64"),
        ({"speakers": 65}, "between 1 and 64"),
        ({"speakers": ["s00", "nobody"]}, "unknown speaker"),
        ({"reps": 0}, "reps"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(SynthError, match=message):
        synthesize_corpus(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unwritable_or_foreign_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SynthError, match="cannot write"):
        synthesize_corpus(blocker / "corpus", **TINY)
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="not empty"):
        synthesize_corpus(foreign, **TINY)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_missing_engine_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metavox.data.synth import engine

    monkeypatch.setattr(engine, "engine_available", lambda: False)
    with pytest.raises(SynthError, match=r"pip install 'metavox\[synth\]'"):
        synthesize_corpus(tmp_path / "out", **TINY)
    assert not (tmp_path / "out").exists()


def test_default_dir_and_ensure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAVOX_CACHE", str(tmp_path / "cache"))
    assert default_corpus_dir() == tmp_path / "cache" / "synth-v1"
    calls: list[Path] = []
    monkeypatch.setattr(gen, "synthesize_corpus", lambda out, **kw: calls.append(out))
    assert ensure_default_corpus() == default_corpus_dir()
    assert calls == [default_corpus_dir()]  # absent -> generated
    monkeypatch.setattr(gen, "corpus_complete", lambda out: True)
    assert ensure_default_corpus(tmp_path / "x") == tmp_path / "x"
    assert len(calls) == 1  # complete -> left alone


def test_wav_header_is_canonical(tmp_path: Path) -> None:
    audio = (np.arange(1600) % 200 - 100).astype(np.int16)
    gen._write_wav(tmp_path / "a" / "x.wav", audio)
    data, sr = sf.read(tmp_path / "a" / "x.wav", dtype="int16")
    assert sr == 16000 and np.array_equal(data, audio)
    assert sf.info(tmp_path / "a" / "x.wav").subtype == "PCM_16"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.wav"]


# ----------------------------------------------------------------------------- with engine


@needs_engine
def test_manifest_audio_and_roles(reference: Path) -> None:
    with open(reference / "manifest.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        rows = list(reader)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert len(rows) == 18
    assert {r["label"] for r in rows} == set(TINY["words"])
    assert {r["speaker"] for r in rows} == set(TINY["speakers"])
    for r in rows:
        assert r["path"] == f"clips/{r['label']}/{r['speaker']}_{r['rep']}.wav"
        data, sr = sf.read(reference / r["path"], dtype="int16")
        assert sr == 16000 and data.shape == (16000,)
        peak_db = 20 * np.log10(np.abs(data).max() / 32767)
        assert abs(peak_db - float(r["gain_db"])) < 0.05  # peak-normalised, never clipped
        assert float(r["offset"]) >= 0 and float(r["offset"]) + float(r["speech_s"]) <= 1.0
        assert 0.1 < float(r["speech_s"]) <= gen.MAX_SPEECH
        ws = "test" if r["label"] in TEST_WORDS else "train"
        assert r["word_split"] == ws
        assert r["split"] == (ws if ws == r["speaker_split"] else "none")
    # s07 is a test speaker and "computer" a training word: no role in the default protocol
    assert {r["split"] for r in rows if r["speaker"] == "s07"} == {"none"}
    splits = json.loads((reference / "splits.json").read_text())
    assert splits["speakers"]["test"] == ["s07"]
    info = json.loads((reference / "synth.json").read_text())
    assert info["status"] == "complete" and info["clips"] == 18
    assert info["engine"].startswith("eSpeak NG")
    assert corpus_complete(reference, **TINY)
    assert not corpus_complete(reference, **{**TINY, "seed": 1})


@needs_engine
def test_loads_through_the_corpus_loader(reference: Path) -> None:
    corpus_mod = pytest.importorskip("metavox.data.corpus")
    corpus = corpus_mod.Corpus.from_manifest(reference / "manifest.csv")
    assert len(corpus) == 18
    assert corpus.labels == sorted(TINY["words"])
    assert corpus.speakers == sorted(TINY["speakers"])
    u = corpus[0]
    assert os.path.isfile(u.path) and u.meta["accent"] and u.meta["split"]


@needs_engine
def test_deterministic_for_a_seed_whatever_the_workers(reference: Path, tmp_path: Path) -> None:
    one = tmp_path / "one-worker"
    synthesize_corpus(one, workers=1, seed=0, **TINY)
    _same_corpus(reference, one)
    other = tmp_path / "seed1"
    synthesize_corpus(other, workers=2, seed=1, **TINY)
    _, mismatch, _ = filecmp.cmpfiles(reference, other, _clips(reference), shallow=False)
    assert len(mismatch) == 18  # a different seed changes every clip


@needs_engine
def test_resumes_missing_clips_and_ignores_temporary_files(reference: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    (out / "manifest.csv").unlink()
    (out / "clips/yes/s00_1.wav").unlink()
    (out / "clips/seven/s07_0.wav").unlink()
    (out / ".parts/s07.csv").unlink()
    # an interrupted write: a half-written temporary file, never taken as a clip
    half = out / "clips/seven/.s07_0.4242.tmp"
    half.write_bytes((out / "clips/seven/s07_1.wav").read_bytes()[:500])
    assert not corpus_complete(out, **TINY)
    result = synthesize_corpus(out, workers=2, seed=0, **TINY)
    assert result.n_written == 2
    assert not half.exists()
    _same_corpus(reference, out)
    again = synthesize_corpus(out, workers=2, seed=0, **TINY)
    assert again.n_written == 0 and again.engine == ""  # complete: no worker started


@needs_engine
def test_interrupted_run_finishes_identically(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "interrupted"

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # after the first word of the first speaker
        synthesize_corpus(out, workers=2, seed=0, progress=stop, **TINY)
    assert 2 <= len(_clips(out)) < 18
    assert not (out / "manifest.csv").exists()
    assert json.loads((out / "synth.json").read_text())["status"] == "incomplete"
    synthesize_corpus(out, workers=2, seed=0, **TINY)
    _same_corpus(reference, out)


@needs_engine
def test_other_settings_are_refused_unless_overwritten(reference: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "settings"
    shutil.copytree(reference, out)
    with pytest.raises(SynthError, match="seed"):
        synthesize_corpus(out, seed=5, **TINY)
    result = synthesize_corpus(out, seed=5, overwrite=True, workers=2,
                               **{**TINY, "speakers": ["s00"]})
    assert result.n_clips == 6 and _clips(out) == sorted(
        f"clips/{w}/s00_{r}.wav" for w in TINY["words"] for r in range(2))


@needs_engine
def test_engine_stays_out_of_the_calling_process(reference: Path) -> None:
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc")
    with open("/proc/self/maps") as fh:
        assert "espeak" not in fh.read()


@needs_engine
def test_cli_synth(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from metavox.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(app, ["data", "synth", "--out", str(out), "--speakers", "2",
                              "--words", "yes,no", "--reps", "1", "--seed", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "4 clips" in res.output
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["path"] for r in rows) == sorted(
        f"clips/{w}/{s}_0.wav" for w in ("yes", "no") for s in ("s00", "s01"))
    words_file = tmp_path / "words.txt"
    words_file.write_text("yes\nno\n")
    res = runner.invoke(app, ["data", "synth", "--out", str(out), "--speakers", "2",
                              "--words", str(words_file), "--reps", "1", "--seed", "3"])
    assert res.exit_code == 0, res.output  # same settings: nothing to do
    bad = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--speakers", "99"])
    assert bad.exit_code != 0 and "between 1 and 64" in bad.output


@needs_engine
def test_no_homophones_in_the_vocabulary() -> None:
    """Labels must be acoustically distinct: no two words share a transcription in any of
    the accents (checked in a subprocess, which loads the three standalone modules without
    the rest of metavox: the engine stays out of this process)."""
    from synth_helpers import run_isolated

    out = run_isolated(
        "e = load('engine').get_engine()\n"
        "words = load('vocabulary').WORDS\n"
        "for a in load('speakers').ACCENTS:\n"
        "    e.set_voice(a)\n"
        "    seen = {}\n"
        "    for w in words:\n"
        "        p = e.phonemes(w).replace(\"'\", '').replace(',', '')\n"
        "        assert p not in seen, (a, w, seen.get(p))\n"
        "        seen[p] = w\n"
        "print(len(words))\n"
    )
    assert out.strip() == str(len(WORDS))
