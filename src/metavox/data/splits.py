"""Seeded class-, speaker- or class-and-speaker-disjoint splits of a corpus.

A :class:`Split` names, per part (``train``/``val``/``test`` ...), the labels and/or the
speakers it holds, plus the seed, the mode and the fingerprint of the corpus it was made
from. It is saved as a small JSON file so that an evaluation can say exactly which split it
used, and applied to a :class:`~metavox.data.corpus.Corpus` (or a feature store) by name.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from metavox.data.corpus import Corpus
from metavox.storage import atomic_write

SplitMode = Literal["class", "speaker", "both"]
_MODES = ("class", "speaker", "both")
_FORMAT = "metavox-split"
_VERSION = 1
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}


class _Filterable(Protocol):
    def filter(
        self, labels: Iterable[str] | None = ..., speakers: Iterable[str] | None = ...
    ) -> Any: ...

    def fingerprint(self) -> str: ...


T = TypeVar("T", bound=_Filterable)


@dataclass(frozen=True)
class SplitPart:
    """The labels and speakers one part keeps (``None`` = no constraint on that axis)."""

    labels: tuple[str, ...] | None = None
    speakers: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Split:
    """A named partition of a corpus' labels and/or speakers (see :func:`make_split`)."""

    mode: str
    seed: int
    fingerprint: str
    parts: dict[str, SplitPart]
    corpus: str = ""
    fractions: dict[str, float] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Part names in their defined order."""
        return list(self.parts)

    def part(self, name: str) -> SplitPart:
        """The part called ``name``; a clear error listing the parts otherwise."""
        if name not in self.parts:
            raise KeyError(f"split has no part {name!r}; parts: {', '.join(self.parts)}")
        return self.parts[name]

    def apply(self, data: T, part: str, *, strict: bool = False) -> T:
        """``data`` (a Corpus or FeatureStore) restricted to ``part``. A corpus whose
        fingerprint differs from the split's is a warning (an error with ``strict``)."""
        p = self.part(part)
        fp = data.fingerprint()
        if fp != self.fingerprint:
            msg = (f"split was made from corpus {self.corpus!r} with fingerprint "
                   f"{self.fingerprint[:12]}, applied to one with {fp[:12]}")
            if strict:
                raise ValueError(msg)
            warnings.warn(msg, stacklevel=2)
        return data.filter(labels=p.labels, speakers=p.speakers)

    def describe(self, corpus: Corpus) -> dict[str, dict[str, int]]:
        """Clips, labels and speakers per part of ``corpus`` (for reports)."""
        out = {}
        for name in self.parts:
            sub = self.apply(corpus, name)
            out[name] = {"clips": len(sub), "labels": len(sub.labels),
                         "speakers": len(sub.speakers)}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "corpus": self.corpus,
            "fingerprint": self.fingerprint,
            "mode": self.mode,
            "seed": self.seed,
            "fractions": dict(self.fractions),
            "parts": {
                name: {
                    "labels": None if p.labels is None else list(p.labels),
                    "speakers": None if p.speakers is None else list(p.speakers),
                }
                for name, p in self.parts.items()
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Split:
        """Inverse of :meth:`to_dict`."""
        if d.get("format") != _FORMAT:
            raise ValueError(f"not a metavox split (format={d.get('format')!r})")
        if int(d.get("version", 0)) > _VERSION:
            raise ValueError(f"split file version {d['version']} is newer than this metavox")
        parts = {
            name: SplitPart(
                None if p.get("labels") is None else tuple(p["labels"]),
                None if p.get("speakers") is None else tuple(p["speakers"]),
            )
            for name, p in d["parts"].items()
        }
        return cls(str(d["mode"]), int(d["seed"]), str(d["fingerprint"]), parts,
                   str(d.get("corpus", "")), dict(d.get("fractions", {})))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the split as JSON (atomically: temp file + rename)."""
        # ASCII escapes keep names that are not valid UTF-8 (surrogates) round-trippable
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        return atomic_write(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Split:
        """Read a split written by :meth:`save`."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


def _allocate(
    items: Sequence[str],
    fractions: Mapping[str, float],
    fixed: Mapping[str, Sequence[str]],
    rng: np.random.Generator,
    what: str,
) -> dict[str, tuple[str, ...]]:
    """Partition ``items``: parts in ``fixed`` get exactly those names; the rest is shuffled
    and shared among the other parts by largest remainder on their fractions."""
    known = set(items)
    taken: dict[str, str] = {}
    for part, names in fixed.items():
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{what} {unknown[:5]} for part {part!r} are not in the corpus")
        for n in names:
            if n in taken and taken[n] != part:
                raise ValueError(f"{what} {n!r} is fixed to both {taken[n]!r} and {part!r}")
            taken[n] = part
    free_parts = [p for p, f in fractions.items() if p not in fixed and f > 0]
    rest = [x for x in sorted(items) if x not in taken]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    counts = dict.fromkeys(free_parts, 0)
    if free_parts and rest:
        total = sum(fractions[p] for p in free_parts)
        exact = [len(rest) * fractions[p] / total for p in free_parts]
        base = [int(np.floor(x)) for x in exact]
        order = sorted(range(len(free_parts)), key=lambda i: (base[i] - exact[i], i))
        for i in order[: len(rest) - sum(base)]:
            base[i] += 1
        # every part with a positive fraction gets at least one item when possible
        for i in range(len(base)):
            if base[i] == 0 and len(rest) >= len(base):
                j = int(np.argmax(base))
                base[j] -= 1
                base[i] += 1
        counts = dict(zip(free_parts, base, strict=True))
    out: dict[str, tuple[str, ...]] = {}
    pos = 0
    for part in dict.fromkeys([*fractions, *fixed]):
        if part in fixed:
            out[part] = tuple(sorted(set(fixed[part])))
        else:
            n = counts.get(part, 0)
            out[part] = tuple(sorted(rest[pos : pos + n]))
            pos += n
    return out


def make_split(
    corpus: Corpus,
    mode: SplitMode = "class",
    fractions: Mapping[str, float] | None = None,
    *,
    labels: Mapping[str, Sequence[str]] | None = None,
    speakers: Mapping[str, Sequence[str]] | None = None,
    speaker_fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> Split:
    """Split ``corpus`` by class (``mode="class"``), by speaker, or both (each part gets
    its own labels AND speakers, so parts share neither).

    ``fractions`` (default train/val/test 0.7/0.1/0.2) share the labels or speakers among
    the parts; ``labels={"test": ["yes", "no"]}`` / ``speakers={...}`` fix a part's names
    exactly and the other parts share the rest. Utterances with no speaker belong to no part
    in the speaker modes. The same corpus, arguments and ``seed`` give the same split.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    fr = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if any(f < 0 for f in fr.values()) or (fr and sum(fr.values()) <= 0):
        raise ValueError(f"fractions must be >= 0 with a positive sum, got {fr}")
    if mode == "speaker" and labels:
        raise ValueError("mode='speaker' splits speakers only; fixed labels need mode='both'")
    if mode == "class" and speakers:
        raise ValueError("mode='class' splits labels only; fixed speakers need mode='both'")
    lab_parts: dict[str, tuple[str, ...]] = {}
    spk_parts: dict[str, tuple[str, ...]] = {}
    if mode in ("class", "both"):
        rng = np.random.default_rng([seed, 0])
        lab_parts = _allocate(corpus.labels, fr, labels or {}, rng, "labels")
    if mode in ("speaker", "both"):
        if not corpus.speakers:
            raise ValueError(f"corpus {corpus.name!r} has no speaker information to split by")
        rng = np.random.default_rng([seed, 1])
        sfr = dict(fr if speaker_fractions is None else speaker_fractions)
        spk_parts = _allocate(corpus.speakers, sfr, speakers or {}, rng, "speakers")
    names = list(dict.fromkeys([*lab_parts, *spk_parts]))
    parts = {
        n: SplitPart(
            lab_parts.get(n, ()) if mode != "speaker" else None,
            spk_parts.get(n, ()) if mode != "class" else None,
        )
        for n in names
    }
    return Split(mode, int(seed), corpus.fingerprint(), parts, corpus.name, fr)
