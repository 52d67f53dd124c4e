"""Seeded splits: determinism, disjointness, fixed names, JSON round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_paths import SHARED_DATA

from metavox.data.corpus import Corpus
from metavox.data.splits import Split, make_split

DATA = SHARED_DATA


@pytest.fixture(scope="module")
def sc(shared_data) -> Corpus:
    return Corpus.from_preset("speech-commands", DATA / "speech_commands_v2_test")


@pytest.fixture(scope="module")
def fsdd(shared_data) -> Corpus:
    return Corpus.from_preset("fsdd", DATA / "fsdd")


def test_class_split_is_deterministic_and_disjoint(sc: Corpus) -> None:
    a = make_split(sc, "class", seed=3)
    assert a == make_split(sc, "class", seed=3)
    assert a != make_split(sc, "class", seed=4)
    assert a.names == ["train", "val", "test"]
    sets = [set(a.part(n).labels) for n in a.names]
    assert sum(map(len, sets)) == 35 and set.union(*sets) == set(sc.labels)
    assert [len(s) for s in sets] == [25, 3, 7]
    assert all(a.part(n).speakers is None for n in a.names)
    train, test = a.apply(sc, "train"), a.apply(sc, "test")
    assert not set(train.labels) & set(test.labels)
    assert len(train) + len(a.apply(sc, "val")) + len(test) == len(sc)


def test_fixed_test_words(sc: Corpus) -> None:
    s = make_split(sc, "class", {"train": 0.8, "val": 0.2},
                   labels={"test": ["yes", "no", "up"]}, seed=0)
    assert s.part("test").labels == ("no", "up", "yes")
    assert not {"yes", "no", "up"} & set(s.part("train").labels + s.part("val").labels)
    assert len(s.part("train").labels) + len(s.part("val").labels) == 32
    with pytest.raises(ValueError, match="not in the corpus"):
        make_split(sc, "class", labels={"test": ["banana"]})
    with pytest.raises(ValueError, match="fixed to both"):
        make_split(sc, "class", labels={"test": ["yes"], "val": ["yes"]})


def test_speaker_split(fsdd: Corpus) -> None:
    s = make_split(fsdd, "speaker", {"train": 4, "test": 2}, seed=1)
    tr, te = s.apply(fsdd, "train"), s.apply(fsdd, "test")
    assert len(tr.speakers) == 4 and len(te.speakers) == 2
    assert not set(tr.speakers) & set(te.speakers)
    assert tr.labels == te.labels == fsdd.labels and len(tr) + len(te) == 3000
    fixed = make_split(fsdd, "speaker", {"train": 1.0}, speakers={"test": ["theo"]})
    assert fixed.apply(fsdd, "test").speakers == ["theo"]
    with pytest.raises(ValueError, match="mode='both'"):
        make_split(fsdd, "speaker", labels={"test": ["1"]})


def test_class_and_speaker_disjoint(sc: Corpus) -> None:
    s = make_split(sc, "both", {"train": 0.75, "test": 0.25}, seed=0)
    tr, te = s.apply(sc, "train"), s.apply(sc, "test")
    assert len(tr) and len(te)
    assert not set(tr.labels) & set(te.labels)
    assert not set(tr.speakers) & set(te.speakers)
    assert set(tr.speakers) <= set(s.part("train").speakers)


def test_json_round_trip(tmp_path: Path, sc: Corpus) -> None:
    s = make_split(sc, "both", labels={"test": ["yes"]}, seed=7)
    path = s.save(tmp_path / "splits" / "sc.json")
    raw = json.loads(path.read_text())
    assert raw["fingerprint"] == sc.fingerprint() and raw["seed"] == 7
    assert raw["mode"] == "both" and raw["parts"]["test"]["labels"] == ["yes"]
    loaded = Split.load(path)
    assert loaded == s
    assert loaded.apply(sc, "test").utterances == s.apply(sc, "test").utterances


def test_apply_checks_the_corpus(sc: Corpus, fsdd: Corpus) -> None:
    s = make_split(fsdd, "speaker", seed=0)
    with pytest.warns(UserWarning, match="fingerprint"):
        s.apply(sc.filter(labels=["yes"]), "train")
    with pytest.raises(ValueError, match="fingerprint"):
        s.apply(sc, "train", strict=True)
    with pytest.raises(KeyError, match="parts: train, val, test"):
        s.part("dev")
    assert set(s.describe(fsdd)) == {"train", "val", "test"}
