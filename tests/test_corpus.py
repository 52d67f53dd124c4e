"""Corpora from presets, patterns and manifests, on the shared data and on tmp files."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from data_paths import SHARED_DATA

from metavox.audio.io import AudioError
from metavox.data.corpus import (
    Corpus,
    CorpusError,
    compile_pattern,
    load_corpus,
    scan_corpus,
    suggest_pattern,
)

DATA = SHARED_DATA
FSDD = DATA / "fsdd"
SC = DATA / "speech_commands_v2_test"


def write_wav(path: Path, seconds: float = 0.1, sr: int = 16000, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.1 * np.sin(2 * np.pi * 440 * t), sr, format=fmt)
    return path


# ----------------------------------------------------------------------------- shared data


def test_fsdd_preset_counts(shared_data) -> None:
    c = Corpus.from_preset("fsdd", FSDD)
    assert len(c) == 3000
    assert c.labels == [str(d) for d in range(10)]
    assert c.speakers == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    assert all(len(v) == 300 for v in c.by_label().values())
    assert all(len(v) == 500 for v in c.by_speaker().values())
    assert c[0].path == str(FSDD / "recordings" / "0_george_0.wav")
    assert c.source.startswith("preset:fsdd")


def test_fsdd_explicit_pattern_matches_preset(shared_data) -> None:
    preset = Corpus.from_preset("fsdd", FSDD)
    c = Corpus.from_pattern(FSDD, "recordings/{label}_{speaker}_{index}.wav")
    assert c.utterances == preset.utterances
    u = next(u for u in c if u.path.endswith("7_jackson_32.wav"))
    assert (u.label, u.speaker) == ("7", "jackson")


def test_speech_commands_preset_counts(shared_data) -> None:
    c = Corpus.from_preset("speech-commands", SC)
    assert len(c) == 4482  # 4890 files minus the 408 _silence_ clips
    assert len(c.labels) == 35 and "_silence_" not in c.labels
    assert len(c.speakers) == 239
    assert all(len(s) == 8 for s in c.speakers)
    core = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
    assert all(len(c.by_label()[w]) >= 390 for w in core)


def test_speech_commands_explicit_patterns(shared_data) -> None:
    preset = Corpus.from_preset("speech-commands", SC)
    c = Corpus.from_pattern(SC, "{label}/{speaker}_nohash_{n}.flac")
    assert c.utterances == preset.utterances
    everything = Corpus.from_pattern(SC, "{label}/{_}.wav")  # no speaker field
    assert len(everything) == 4890 and len(everything.labels) == 36
    assert everything.speakers == [] and everything[0].speaker is None


def test_load_corpus_specs(shared_data) -> None:
    n = len(load_corpus("fsdd", FSDD))
    assert len(load_corpus(f"fsdd:{FSDD}")) == n
    assert len(load_corpus(str(FSDD / "recordings" / "{label}_{speaker}_{n}.wav"))) == n
    assert load_corpus(FSDD).name == "fsdd"  # folder: detected preset
    assert len(load_corpus(SC)) == 4482
    with pytest.raises(CorpusError, match="needs a root"):
        load_corpus("fsdd")
    with pytest.raises(CorpusError, match="unknown corpus preset"):
        Corpus.from_preset("timit", FSDD)


def test_no_match_error_is_helpful(shared_data) -> None:
    with pytest.raises(CorpusError) as info:
        Corpus.from_pattern(FSDD, "{label}_{speaker}_{n}.wav")
    msg = str(info.value)
    assert str(FSDD) in msg and "3000" in msg and ".wav'" in msg
    assert "recordings/{label}_{speaker}_{_}.wav" in msg  # suggestion that works
    assert len(Corpus.from_pattern(FSDD, "recordings/{label}_{speaker}_{_}.wav")) == 3000


def test_root_missing(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        Corpus.from_pattern(tmp_path / "nope", "{label}/{_}.wav")
    with pytest.raises(CorpusError, match="no audio files"):
        Corpus.from_pattern(tmp_path, "{label}/{_}.wav")


# ----------------------------------------------------------------------------- patterns


def test_pattern_extension_insensitive(tmp_path: Path) -> None:
    write_wav(tmp_path / "yes" / "a_1.wav")
    write_wav(tmp_path / "yes" / "b_1.FLAC", fmt="FLAC")
    write_wav(tmp_path / "no" / "c_1.ogg", fmt="OGG")
    write_wav(tmp_path / "no" / "d_1.Wav")
    (tmp_path / "no" / "notes.txt").write_text("not audio")
    (tmp_path / "no" / "e_1.wav.bak").write_text("not audio")
    for pattern in ("{label}/{speaker}_{n}.wav", "{label}/{speaker}_{n}.flac",
                    "{label}/{speaker}_{n}.MP3", "{label}/{speaker}_{n}"):
        c = Corpus.from_pattern(tmp_path, pattern)
        assert [(u.label, u.speaker) for u in c] == [
            ("no", "c"), ("no", "d"), ("yes", "a"), ("yes", "b")], pattern


def test_labels_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    for label in ("turn on", "café", "日本語"):
        for spk in ("Zoë", "bob smith"):
            write_wav(tmp_path / label / f"{spk}_nohash_0.wav")
    c = Corpus.from_preset("speech-commands", tmp_path)
    assert c.labels == sorted(["turn on", "café", "日本語"])
    assert c.speakers == ["Zoë", "bob smith"]
    assert len(c.filter(labels=["café"], speakers=["Zoë"])) == 1
    assert all(os.path.isfile(u.path) for u in c)


def test_any_depth_and_ignored_fields(tmp_path: Path) -> None:
    write_wav(tmp_path / "spk1" / "sess a" / "x" / "go" / "take_1.wav")
    write_wav(tmp_path / "spk2" / "sess b" / "y" / "stop" / "take_7.wav")
    write_wav(tmp_path / "spk2" / "too-shallow" / "stop" / "take_8.wav")
    c = Corpus.from_pattern(tmp_path, "{speaker}/{session}/{_}/{label}/take_{n}.wav")
    assert [(u.label, u.speaker) for u in c] == [("go", "spk1"), ("stop", "spk2")]
    deep = Corpus.from_pattern(tmp_path, "**/{label}/take_{n}.wav")
    assert len(deep) == 3 and deep.speakers == []


def test_fields_inside_a_file_name_are_non_greedy() -> None:
    comp = compile_pattern("recordings/{label}_{speaker}_{n}.wav")
    m = comp.regex.match("recordings/7_jackson_32.flac")
    assert m and m.group("label") == "7" and m.group("speaker") == "jackson"
    assert comp.regex.match("recordings/a/7_jackson_32.wav") is None  # fields never span /
    assert compile_pattern("{label}/{_}.wav").max_depth == 1
    assert compile_pattern("**/{label}/{_}.wav").max_depth is None
    with pytest.raises(CorpusError, match="no {label}"):
        compile_pattern("{speaker}/{n}.wav")


def test_suggest_pattern() -> None:
    assert suggest_pattern(["yes/ab_nohash_0.wav", "no/cd_nohash_1.wav"]) == \
        "{label}/{speaker}_{_}.wav"
    assert suggest_pattern(["rec/1_bob_2.wav", "rec/2_al_0.wav"]) == \
        "rec/{label}_{speaker}_{_}.wav"


# ----------------------------------------------------------------------------- manifests


def test_manifest(tmp_path: Path) -> None:
    a = write_wav(tmp_path / "audio" / "a.wav")
    b = write_wav(tmp_path / "elsewhere" / "b.flac", fmt="FLAC")
    man = tmp_path / "lists" / "train.csv"
    man.parent.mkdir()
    with open(man, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "speaker", "gender"])
        w.writerow(["../audio/a.wav", "turn on", "alice", "f"])
        w.writerow([str(b), "café", "", "m"])
    c = Corpus.from_manifest(man)
    assert [(u.label, u.speaker) for u in c] == [("turn on", "alice"), ("café", None)]
    assert c[0].path == str(a) and c[1].path == str(b)
    assert c[0].meta == {"gender": "f"}
    assert c.name == "train" and c.source.startswith("manifest:")
    assert len(load_corpus(man)) == 2


def test_manifest_errors(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\na.wav,x\n")
    with pytest.raises(CorpusError, match="lacks column.*path"):
        Corpus.from_manifest(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("path,label,speaker\na.wav,x,s\nb.wav,x,s\nc.wav,y,s\n")
    with pytest.raises(CorpusError, match="2 of 3 listed files do not exist"):
        Corpus.from_manifest(missing)
    with pytest.raises(CorpusError, match="not found"):
        Corpus.from_manifest(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- helpers


def test_fingerprint_tracks_files(tmp_path: Path) -> None:
    write_wav(tmp_path / "yes" / "a_nohash_0.wav")
    write_wav(tmp_path / "no" / "b_nohash_0.wav")
    c = Corpus.from_preset("speech-commands", tmp_path)
    fp = c.fingerprint()
    assert Corpus.from_preset("speech-commands", tmp_path).fingerprint() == fp
    assert c.filter(labels=["yes"]).fingerprint() != fp
    path = tmp_path / "yes" / "a_nohash_0.wav"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert Corpus.from_preset("speech-commands", tmp_path).fingerprint() != fp


def test_filter(shared_data) -> None:
    c = Corpus.from_preset("fsdd", FSDD)
    sub = c.filter(labels=["1", "2"], speakers=["theo"])
    assert len(sub) == 100 and sub.labels == ["1", "2"] and sub.speakers == ["theo"]
    assert "filter" in sub.source and sub.root == c.root


def test_scan_report_on_shared_data(shared_data) -> None:
    c = Corpus.from_preset("fsdd", FSDD).filter(labels=["3"])
    r = scan_corpus(c, workers=2)
    assert (r.clips, r.labels, r.speakers) == (300, 1, 6)
    assert r.sample_rates == {8000: 300} and r.formats == {"WAV": 300}
    assert 0.1 < r.duration_min <= r.duration_median <= r.duration_max < 3.0
    assert r.unreadable == [] and r.clips_per_speaker["theo"] == 50
    quick = scan_corpus(Corpus.from_preset("speech-commands", SC), check_audio=False)
    assert quick.clips == 4482 and quick.duration_min is None and not quick.audio_checked


def test_scan_skips_and_reports_bad_files(tmp_path: Path) -> None:
    write_wav(tmp_path / "yes" / "a_nohash_0.wav")
    (tmp_path / "yes" / "b_nohash_0.wav").write_bytes(b"RIFF....not really a wave file")
    (tmp_path / "no").mkdir()
    (tmp_path / "no" / "c_nohash_0.wav").write_bytes(b"")
    c = Corpus.from_preset("speech-commands", tmp_path)
    with pytest.warns(UserWarning, match="2 of 3 files"):
        r = scan_corpus(c, workers=1)
    assert r.clips == 3 and r.sample_rates == {16000: 1}
    assert sorted(p for p, _ in r.unreadable) == ["no/c_nohash_0.wav", "yes/b_nohash_0.wav"]
    assert all(reason for _, reason in r.unreadable)
    assert r.to_dict()["unreadable"][0]["path"] == "no/c_nohash_0.wav"
    with pytest.raises(AudioError):
        scan_corpus(c, on_error="raise")
