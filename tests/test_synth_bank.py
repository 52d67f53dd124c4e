"""The multilingual synthetic word bank: phoneme tools, near-homophones, backgrounds, the
generator (determinism, resumption, splits, languages) and its CLI.

Generation tests use a tiny bank (3 languages, 12 words, 2 speakers, 1 repetition) and need
the optional extra ``metavox[synth]`` (eSpeak NG); they are skipped without it. The engine
is only ever loaded in the generator's worker processes.
"""

from __future__ import annotations

import csv
import filecmp
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from metavox.data.synth import generate as gen
from metavox.data.synth.bank import (
    BANK_COLUMNS,
    LANGUAGES,
    background_files,
    background_segment,
    homophone_map,
    synthesize_bank,
)
from metavox.data.synth.engine import engine_available
from metavox.data.synth.phonemes import (
    PhonemeModel,
    edit_distance,
    greedy_parse,
    neighbours,
    parse_transcription,
    read_phoneme_tables,
    romanise,
    speakable,
    spell,
    table_mnemonics,
)
from metavox.data.synth.seeds import SEED_WORDS

needs_engine = pytest.mark.skipif(
    not engine_available(),
    reason="eSpeak NG is an optional extra: pip install 'metavox[synth]'",
)

TINY = {"words": 12, "languages": ["de", "sw", "cmn"], "speakers": ["s00", "s07"], "reps": 1}


def _phontab() -> bytes:
    import espeakng_loader

    return (Path(espeakng_loader.get_data_path()) / "phontab").read_bytes()


# ----------------------------------------------------------------------------- phonemes


def test_greedy_parse_and_speakable() -> None:
    mnem = frozenset({"t", "S", "tS", "i:", "i", "z", "r", "T"})
    assert greedy_parse("tSi:z", mnem) == ["tS", "i:", "z"]
    assert greedy_parse("Tri:", mnem) == ["T", "r", "i:"]
    assert greedy_parse("Tqi", mnem) is None
    # /t/ + /S/ would be read as one /tS/: not speakable as two phonemes
    assert not speakable([("t", 0), ("S", 0), ("i:", 2)], mnem)
    assert speakable([("tS", 0), ("i:", 2), ("z", 0)], mnem)
    assert spell([("T", 0), ("r", 0), ("i:", 2)]) == "Tr'i:"


def test_parse_transcription() -> None:
    mnem = frozenset({"T", "r", "i:", "s", "'", "5", "51", "i["})
    assert parse_transcription("T_r_'i:", mnem) == [("T", 0), ("r", 0), ("i:", 2)]
    # tones written onto their vowel are split into their own phoneme
    assert parse_transcription("s_'i[51", mnem) == [("s", 0), ("i[", 2), ("51", 0)]
    assert parse_transcription("(en)_T_r_'i:_(de)", mnem) is None  # a language switch
    assert parse_transcription("T_r", mnem) is None  # no vowel


@needs_engine
def test_phoneme_tables_of_every_language() -> None:
    tables = read_phoneme_tables(_phontab())
    for lang, (_voice, table, _tonal) in LANGUAGES.items():
        mnem = table_mnemonics(tables, table)
        assert {"a", "t", "k"} <= mnem, lang  # base phonemes come through the includes
    en = table_mnemonics(tables, "en")
    assert {"T", "D", "i:", "aI"} <= en
    assert {"51", "214"} <= table_mnemonics(tables, "cmn")  # Mandarin tones
    with pytest.raises(ValueError, match="no phoneme table"):
        table_mnemonics(tables, "xx")


def test_neighbours_are_similar_phonemes() -> None:
    inventory = ["T", "t", "f", "s", "d", "m", "r", "i:", "I", "u:", "a", "aI"]
    near_th = neighbours("T", inventory)
    assert {"t", "f", "s"} <= set(near_th)  # three -> tree, free, (sree)
    assert "m" not in near_th and "i:" not in near_th and "T" not in near_th
    assert "I" in neighbours("i:", inventory) and "u:" not in neighbours("i:", inventory)
    assert neighbours("51", ["35", "214", "a"], tonal=True) == ["214", "35"]


def test_phoneme_model_is_deterministic_and_phonotactic() -> None:
    words = [[("k", 0), ("a", 2), ("l", 0), ("b", 0), ("o", 0)],
             [("b", 0), ("a", 2), ("k", 0), ("o", 0)],
             [("l", 0), ("o", 2), ("b", 0), ("a", 0)]]
    model = PhonemeModel.fit(words)
    draws = [model.sample(np.random.default_rng(s)) for s in range(40)]
    again = [model.sample(np.random.default_rng(s)) for s in range(40)]
    assert draws == again
    pairs = {(a[0], b[0]) for w in words for a, b in zip(w, w[1:], strict=False)}
    made = [d for d in draws if d is not None]
    assert made
    for d in made:
        assert all((a[0], b[0]) in pairs for a, b in zip(d, d[1:], strict=False))
        assert sum(s == 2 for _, s in d) == 1  # exactly one primary stress
    assert romanise([("T", 0), ("r", 0), ("i:", 2)]) == "thri"


def test_seed_words_cover_every_language() -> None:
    assert set(SEED_WORDS) == set(LANGUAGES)
    speech_commands = {"yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
                       "three", "tree", "bed", "bird", "cat", "dog", "house", "happy"}
    assert not speech_commands & set(SEED_WORDS["en"])
    assert all(len(words) >= 40 for words in SEED_WORDS.values())


# ----------------------------------------------------------------------------- backgrounds


def test_background_mixed_at_the_stated_snr() -> None:
    rng = np.random.default_rng(0)
    n = 16000
    recording = 0.3 * rng.standard_normal(40000) + 0.05  # DC removed by the segment
    seg, start = background_segment(recording, n, np.random.default_rng(1))
    assert seg.shape == (n,) and 0 <= start <= 40000 - n
    assert math.isclose(float(np.sqrt(np.mean(seg**2))), 1.0, rel_tol=1e-9)
    speech = np.sin(np.arange(6000) / 7.0)
    clean = np.zeros(n)
    clean[5000:11000] = speech
    power = float(np.mean(speech**2))
    for snr in (5.0, 17.5, 40.0):
        mix = gen.mix_at_snr(clean, power, seg, snr)
        added = mix - clean
        assert math.isclose(10 * math.log10(power / float(np.mean(added**2))), snr,
                            abs_tol=1e-9)
    assert background_segment(np.zeros(n), n, rng) is None  # digital silence: not used
    short, _ = background_segment(rng.standard_normal(3000), n, rng)  # tiled
    assert short.shape == (n,)


def test_background_files(tmp_path: Path) -> None:
    with pytest.raises(gen.SynthError, match="does not exist"):
        background_files(tmp_path / "none")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(gen.SynthError, match="no .wav"):
        background_files(tmp_path)
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "sub" / "b.wav", np.zeros(10), 16000)
    sf.write(tmp_path / "a.flac", np.zeros(10), 16000)
    assert background_files(tmp_path) == ["a.flac", "sub/b.wav"]


# ----------------------------------------------------------------------------- the bank


def _backgrounds(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    sf.write(folder / "hum.wav", 0.2 * np.sin(np.arange(24000) * 0.05)
             + 0.01 * rng.standard_normal(24000), 8000)  # resampled to 16 kHz
    sf.write(folder / "hiss.flac", 0.1 * rng.standard_normal(20000), 16000)
    return folder


@pytest.fixture(scope="module")
def banks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    if not engine_available():
        pytest.skip("eSpeak NG is an optional extra: pip install 'metavox[synth]'")
    root = tmp_path_factory.mktemp("bank")
    bg = _backgrounds(root / "backgrounds")
    a, b = root / "a", root / "b"
    synthesize_bank(a, seed=3, backgrounds=bg, workers=1, **TINY)
    synthesize_bank(b, seed=3, backgrounds=bg, workers=2, **TINY)
    return a, b, bg


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _same(a: Path, b: Path) -> None:
    names = sorted(str(p.relative_to(a)) for p in (a / "clips").rglob("*.wav"))
    assert names == sorted(str(p.relative_to(b)) for p in (b / "clips").rglob("*.wav"))
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    for name in ("manifest.csv", "lexicon.json", "homophones.json", "splits.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_bank_is_deterministic_whatever_the_workers(banks: tuple[Path, Path, Path]) -> None:
    a, b, _ = banks
    _same(a, b)
    rows = _rows(a)
    assert len(rows) == TINY["words"] * len(TINY["speakers"]) * TINY["reps"]
    assert list(rows[0]) == list(BANK_COLUMNS)


def test_bank_languages_words_and_clips(banks: tuple[Path, Path, Path]) -> None:
    a, _, bg = banks
    lexicon = json.loads((a / "lexicon.json").read_text(encoding="utf-8"))["words"]
    assert [w["language"] for w in lexicon] == ["de"] * 4 + ["sw"] * 4 + ["cmn"] * 4
    labels = [w["label"] for w in lexicon]
    assert len(set(labels)) == len(labels)
    assert len({(w["language"], tuple(w["tokens"])) for w in lexicon}) == len(lexicon)
    rows = _rows(a)
    assert {r["language"] for r in rows} == set(TINY["languages"])
    for r in rows:
        voice = LANGUAGES[r["language"]][0]
        assert r["accent"].startswith(voice + "+")
        assert r["background"] in ("hum.wav", "hiss.flac")  # no silent recording here
        assert 0.0 <= float(r["background_offset"]) <= 2.0
        audio, sr = sf.read(a / r["path"], dtype="int16")
        assert sr == 16000 and audio.shape == (16000,) and np.abs(audio).max() > 0
    info = json.loads((a / "synth.json").read_text())
    assert info["status"] == "complete" and info["config"]["backgrounds"]["files"] == 2
    assert info["config"]["backgrounds"]["folder"] == str(bg.resolve())


def test_generated_clips_hold_their_background_at_their_snr(
        banks: tuple[Path, Path, Path]) -> None:
    """Rebuild each clip's background segment from the manifest, fit its level outside the
    spoken part, and measure the speech-to-background ratio inside it."""
    from metavox.data.synth.bank import _load_background

    a, _, bg = banks
    n = 16000
    for r in _rows(a):
        clip = sf.read(a / r["path"], dtype="float64")[0]
        rec = _load_background(str(bg / r["background"]))
        b0 = round(float(r["background_offset"]) * n)
        seg = background_segment(rec, n, _FixedStart(b0))[0]
        s_len = round(float(r["speech_s"]) * n)
        best = None
        for start in range(round(float(r["offset"]) * n) - 1, round(float(r["offset"]) * n) + 2):
            outside = np.ones(n, dtype=bool)
            outside[max(start, 0): start + s_len] = False
            c = float(clip[outside] @ seg[outside] / (seg[outside] @ seg[outside]))
            resid = float(np.sum((clip[outside] - c * seg[outside]) ** 2))
            if best is None or resid < best[0]:
                best = (resid, start, c)
        _, start, c = best
        inside = slice(start, start + s_len)
        speech = clip[inside] - c * seg[inside]
        snr = 10 * math.log10(float(np.mean(speech**2)) / c**2)
        assert abs(snr - float(r["snr_db"])) < 0.5, (r["path"], snr, r["snr_db"])


class _FixedStart:
    """Stands in for the generator's random draw of a segment start."""

    def __init__(self, start: int) -> None:
        self.start = start

    def integers(self, low: int, high: int) -> int:
        assert low <= self.start < high
        return self.start


def test_near_homophones_differ_by_one_phoneme(banks: tuple[Path, Path, Path]) -> None:
    a, _, _ = banks
    lexicon = json.loads((a / "lexicon.json").read_text(encoding="utf-8"))["words"]
    by_label = {w["label"]: w for w in lexicon}
    homophones = json.loads((a / "homophones.json").read_text(encoding="utf-8"))
    assert homophones == homophone_map(lexicon)
    variants = [w for w in lexicon if w["kind"] == "variant"]
    assert variants  # the tiny bank has families (seeded)
    for w in variants:
        base = by_label[w["group"]]
        assert base["kind"] in ("real", "pseudo") and base["language"] == w["language"]
        assert w["tokens"] != base["tokens"]
        assert len(w["tokens"]) == len(base["tokens"])  # a substitution
        assert edit_distance(w["tokens"], base["tokens"]) == 1
        diff = [i for i, (x, y) in enumerate(zip(w["tokens"], base["tokens"], strict=True))
                if x != y]
        assert len(diff) == 1
        i = diff[0]
        tonal = LANGUAGES[w["language"]][2]
        assert w["tokens"][i] in neighbours(base["tokens"][i], [w["tokens"][i]], tonal)
        assert w["label"] in homophones[base["label"]]
        assert base["label"] in homophones[w["label"]]
    rows = _rows(a)
    groups = {r["label"]: r["group"] for r in rows}
    assert all(groups[w["label"]] == w["group"] for w in lexicon)


def test_bank_splits_are_disjoint_and_keep_families(banks: tuple[Path, Path, Path]) -> None:
    a, _, _ = banks
    splits = json.loads((a / "splits.json").read_text(encoding="utf-8"))
    sets = [set(splits["words"][k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    lexicon = json.loads((a / "lexicon.json").read_text(encoding="utf-8"))["words"]
    assert set().union(*sets) == {w["label"] for w in lexicon}
    split_of = {w["label"]: w["split"] for w in lexicon}
    assert all(split_of[w["label"]] == split_of[w["group"]] for w in lexicon)
    assert splits["speakers"] == {"train": ["s00"], "val": [], "test": ["s07"]}
    assert splits["languages"] == TINY["languages"]
    for r in _rows(a):
        assert r["split"] == (r["word_split"] if r["word_split"] == r["speaker_split"]
                              else "none")


def test_bank_resumes_and_refuses_other_settings(banks: tuple[Path, Path, Path],
                                                 tmp_path: Path) -> None:
    a, _, bg = banks
    c = tmp_path / "c"
    shutil.copytree(a, c)
    (c / ".parts" / "s07.csv").unlink()
    victim = next((c / "clips").rglob("s07_0.wav"))
    victim.unlink()
    res = synthesize_bank(c, seed=3, backgrounds=bg, workers=1, **TINY)
    assert res.n_written == 1 and res.n_clips == len(_rows(a))
    _same(a, c)
    with pytest.raises(gen.SynthError, match="other settings"):
        synthesize_bank(c, seed=4, backgrounds=bg, workers=1, **TINY)


def test_bank_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(gen.SynthError, match="unknown languages"):
        synthesize_bank(tmp_path / "x", languages=["en", "klingon"])
    with pytest.raises(gen.SynthError, match="words must be"):
        synthesize_bank(tmp_path / "x", words=1, languages=["en", "de"])
    with pytest.raises(gen.SynthError, match="unknown speaker"):
        synthesize_bank(tmp_path / "x", words=40, speakers=["zz"])
    with pytest.raises(gen.SynthError, match="does not exist"):
        synthesize_bank(tmp_path / "x", words=40, backgrounds=tmp_path / "nothing")


def test_cli_bank_options(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from metavox.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["data", "synth", "--bank", "--out", str(tmp_path / "b"),
                              "--words", "yes,no"])
    assert res.exit_code != 0 and "number of words" in res.output
    res = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "d"),
                              "--languages", "de"])
    assert res.exit_code != 0 and "--bank" in res.output
    res = runner.invoke(app, ["data", "synth", "--bank", "--out", str(tmp_path / "e"),
                              "--languages", "de,xx", "--words", "4"])
    assert res.exit_code != 0 and "unknown languages" in res.output


@needs_engine
def test_engine_reads_phoneme_mnemonics() -> None:
    """With ``phoneme_input`` eSpeak NG speaks ``[[Tr'i:]]`` as "three" (about as long);
    without it, it reads the brackets and letters as text (much longer). Run in a
    subprocess that loads engine.py alone, so that the engine stays out of this process."""
    from synth_helpers import run_isolated

    out = run_isolated(
        "e = load('engine').get_engine(); e.set_voice('en')\n"
        "kw = dict(rate=175, pitch=50, pitch_range=50, seed=1, volume=25)\n"
        "word = len(e.synthesize('three', **kw))\n"
        "ph = len(e.synthesize(\"[[Tr'i:]]\", phoneme_input=True, **kw))\n"
        "text = len(e.synthesize(\"[[Tr'i:]]\", **kw))\n"
        "print(word, ph, text)\n"
    )
    word, ph, text = map(int, out.split())
    assert abs(ph - word) < 0.1 * word
    assert text > 1.5 * word
