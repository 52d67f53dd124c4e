"""eSpeak NG phoneme strings: parse, compare, generate and edit them (pure functions).

eSpeak NG names phonemes with ASCII mnemonics of one to four characters (``T`` is the
"th" of *three*, ``tS`` the "ch" of *church*, ``i:`` a long i, ``51`` a Mandarin tone),
defined per language in its compiled phoneme tables (``phontab``). Text inside ``[[ ]]`` is
read as such mnemonics, longest match first, so a phoneme list is spoken exactly as listed
only when that greedy reading of its concatenation gives the list back
(:func:`speakable`).

The multilingual word bank uses these functions to learn each language's phonotactics
from eSpeak's transcriptions of real words (:class:`PhonemeModel`), to generate
pseudo-words from it, and to make near-homophones: the same phonemes with one phoneme
replaced by a similar one of the same language (:func:`neighbours`: a consonant that
differs in exactly one of place, manner or voicing -- *three* /Tri:/ -> *tree* /tri:/,
*free* /fri:/ -- a vowel one step away in height, backness or rounding or the same vowel
with another length, nasality or tone, or another tone).
"""

from __future__ import annotations

import struct
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Phoneme",
    "read_phoneme_tables",
    "table_mnemonics",
    "greedy_parse",
    "parse_transcription",
    "speakable",
    "spell",
    "kind",
    "neighbours",
    "romanise",
    "PhonemeModel",
    "edit_distance",
]

#: One phoneme of a word: its mnemonic and its stress (0 none, 1 secondary, 2 primary).
Phoneme = tuple[str, int]

_STRESS = {"'": 2, ",": 1}
_STRESS_MARK = {2: "'", 1: ","}
_PAUSE_CHARS = set("_|:!;-")


def read_phoneme_tables(phontab: bytes) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """The phoneme tables of an eSpeak NG ``phontab`` file: name -> (the table it includes,
    its own mnemonics). Raises ``ValueError`` on a file it cannot read."""
    try:
        (n_tables,) = struct.unpack_from("<i", phontab, 0)
        off = 4
        raw: list[tuple[str, int, tuple[str, ...]]] = []
        for _ in range(n_tables):
            n_ph, includes = phontab[off], phontab[off + 1]
            name = phontab[off + 4: off + 36].split(b"\0")[0].decode("ascii")
            off += 36
            names = []
            for _ in range(n_ph):
                (mnemonic,) = struct.unpack_from("<I", phontab, off)
                names.append(struct.pack("<I", mnemonic).rstrip(b"\0").decode("latin-1"))
                off += 16
            raw.append((name, includes, tuple(n for n in names if n)))
    except (struct.error, IndexError, UnicodeDecodeError) as err:
        raise ValueError(f"not an eSpeak NG phontab file: {err}") from None
    # ``includes`` is the index of the included table plus one (0: none).
    return {name: (raw[inc - 1][0] if 0 < inc <= len(raw) else None, names)
            for name, inc, names in raw}


def table_mnemonics(tables: dict[str, tuple[str | None, tuple[str, ...]]],
                    name: str) -> frozenset[str]:
    """Every mnemonic a voice using table ``name`` understands (its own and included ones)."""
    if name not in tables:
        raise ValueError(f"eSpeak NG has no phoneme table {name!r}")
    out: set[str] = set()
    seen: set[str] = set()
    cur: str | None = name
    while cur is not None and cur not in seen:
        seen.add(cur)
        parent, names = tables[cur]
        out.update(names)
        cur = parent
    return frozenset(out)


def greedy_parse(text: str, mnemonics: frozenset[str]) -> list[str] | None:
    """Read ``text`` as eSpeak does inside ``[[ ]]``: the longest known mnemonic at each
    position. ``None`` where some character starts no mnemonic."""
    out: list[str] = []
    i = 0
    while i < len(text):
        for n in (4, 3, 2, 1):
            if text[i: i + n] in mnemonics and len(text[i: i + n]) == n:
                out.append(text[i: i + n])
                i += n
                break
        else:
            return None
    return out


def parse_transcription(transcription: str, mnemonics: frozenset[str],
                        tonal: bool = False) -> list[Phoneme] | None:
    """The phonemes of one word from eSpeak's transcription with ``_`` between phonemes
    (``espeak_TextToPhonemes`` with a separator), stress kept on the phoneme it precedes.
    ``None`` when it is not one plain word of this table (a language switch, an unknown
    mnemonic, a pause inside, no vowel)."""
    text = transcription.strip()
    if not text or "(" in text or " " in text:
        return None
    out: list[Phoneme] = []
    for piece in text.split("_"):
        stress = 0
        while piece and piece[0] in _STRESS:
            stress = max(stress, _STRESS[piece[0]])
            piece = piece[1:]
        if not piece or set(piece) <= _PAUSE_CHARS:
            continue
        parts = greedy_parse(piece, mnemonics)
        if parts is None:
            return None
        out.extend((p, stress if i == 0 else 0) for i, p in enumerate(parts))
    if not out or not any(kind(p, tonal) == "vowel" for p, _ in out):
        return None
    return out


def spell(phonemes: Sequence[Phoneme]) -> str:
    """The mnemonic string eSpeak reads inside ``[[ ]]`` (stress marks before their
    phoneme)."""
    return "".join(_STRESS_MARK.get(s, "") + p for p, s in phonemes)


def speakable(phonemes: Sequence[Phoneme], mnemonics: frozenset[str]) -> bool:
    """Whether eSpeak reads :func:`spell` of ``phonemes`` back as exactly these phonemes
    (no two neighbours merge into a longer mnemonic)."""
    names = [p for p, _ in phonemes]
    if any(n not in mnemonics for n in names):
        return False
    return greedy_parse("".join(names), mnemonics) == names


# ----------------------------------------------------------------------------- similarity

# Consonants by their first character: (place, manner, voiced). Places are coarse
# (labial, coronal, dorsal, glottal) so that /T/ -> /t/ is a change of manner only.
_CONSONANTS: dict[str, tuple[str, str, int]] = {
    "p": ("lab", "stop", 0), "b": ("lab", "stop", 1), "t": ("cor", "stop", 0),
    "d": ("cor", "stop", 1), "c": ("dor", "stop", 0), "J": ("dor", "stop", 1),
    "k": ("dor", "stop", 0), "g": ("dor", "stop", 1), "q": ("dor", "stop", 0),
    "?": ("glo", "stop", 0), "f": ("lab", "fric", 0), "v": ("lab", "fric", 1),
    "B": ("lab", "fric", 1), "F": ("lab", "fric", 0), "T": ("cor", "fric", 0),
    "D": ("cor", "fric", 1), "s": ("cor", "fric", 0), "z": ("cor", "fric", 1),
    "S": ("cor", "fric", 0), "Z": ("cor", "fric", 1), "C": ("dor", "fric", 0),
    "x": ("dor", "fric", 0), "X": ("dor", "fric", 0), "Q": ("dor", "fric", 1),
    "h": ("glo", "fric", 0), "H": ("glo", "fric", 1), "m": ("lab", "nasal", 1),
    "n": ("cor", "nasal", 1), "N": ("dor", "nasal", 1), "l": ("cor", "liquid", 1),
    "L": ("cor", "liquid", 1), "r": ("cor", "liquid", 1), "R": ("dor", "liquid", 1),
    "*": ("cor", "liquid", 1), "w": ("lab", "glide", 1), "j": ("dor", "glide", 1),
}
_CONSONANT_PREFIXES: dict[str, tuple[str, str, int]] = {
    "tS": ("cor", "affr", 0), "ts": ("cor", "affr", 0), "dZ": ("cor", "affr", 1),
    "dz": ("cor", "affr", 1), "pF": ("lab", "affr", 0), "n^": ("dor", "nasal", 1),
    "l^": ("dor", "liquid", 1),
}
# Vowels by their first character: (height 0 close .. 3 open, backness 0 front .. 2 back,
# rounded).
_VOWELS: dict[str, tuple[int, int, int]] = {
    "i": (0, 0, 0), "y": (0, 0, 1), "I": (1, 0, 0), "Y": (1, 0, 1), "e": (1, 0, 0),
    "E": (2, 0, 0), "W": (2, 0, 1), "&": (3, 0, 0), "a": (3, 1, 0), "A": (3, 2, 0),
    "0": (3, 2, 1), "V": (2, 2, 0), "O": (2, 2, 1), "o": (1, 2, 1), "U": (1, 2, 1),
    "u": (0, 2, 1), "@": (2, 1, 0), "3": (2, 1, 0),
}


def kind(mnemonic: str, tonal: bool = False) -> str:
    """``"vowel"``, ``"consonant"``, ``"tone"`` or ``"other"``. In a tonal language's table
    (``tonal``) every all-digit mnemonic is a tone; elsewhere ``0`` and ``3`` are vowels."""
    if not mnemonic:
        return "other"
    if mnemonic.isdigit() and (tonal or mnemonic not in ("0", "3")):
        return "tone"
    if mnemonic[0] in _VOWELS:
        return "vowel"
    if mnemonic[:2] in _CONSONANT_PREFIXES or mnemonic[0] in _CONSONANTS:
        return "consonant"
    return "other"


def _consonant(m: str) -> tuple[str, str, int]:
    return _CONSONANT_PREFIXES.get(m[:2]) or _CONSONANTS[m[0]]


def _similar(a: str, b: str, tonal: bool) -> bool:
    ka, kb = kind(a, tonal), kind(b, tonal)
    if a == b or ka != kb or ka == "other":
        return False
    if ka == "tone":
        return True
    if ka == "vowel":
        (h1, b1, r1), (h2, b2, r2) = _VOWELS[a[0]], _VOWELS[b[0]]
        return abs(h1 - h2) + abs(b1 - b2) + abs(r1 - r2) <= 1
    fa, fb = _consonant(a), _consonant(b)
    return sum(x != y for x, y in zip(fa, fb, strict=True)) <= 1


def neighbours(mnemonic: str, inventory: Iterable[str], tonal: bool = False) -> list[str]:
    """The phonemes of ``inventory`` similar to ``mnemonic`` (sorted): a consonant differing
    in exactly one of place, manner, voicing (or only in a modifier such as aspiration); a
    vowel one step away in height, backness or rounding (or only in length, nasality,
    tone); any other tone."""
    return sorted(m for m in set(inventory) if _similar(mnemonic, m, tonal))


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two phoneme sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


_ROMAN = {
    "@": "e", "3": "er", "&": "ae", "0": "o", "V": "u", "T": "th", "D": "dh", "S": "sh",
    "Z": "zh", "N": "ng", "C": "h", "x": "kh", "X": "kh", "tS": "ch", "dZ": "j",
    "n^": "ny", "l^": "ly", "j": "y", "*": "r", "J": "gy", "?": "", "W": "oe", "Y": "oe",
}


def romanise(phonemes: Sequence[Phoneme]) -> str:
    """A rough ASCII spelling (lower-case letters only) for file and label names."""
    out = []
    for p, _ in phonemes:
        if p in _ROMAN:
            out.append(_ROMAN[p])
        elif p[:2] in _ROMAN:
            out.append(_ROMAN[p[:2]] + "".join(c for c in p[2:].lower() if "a" <= c <= "z"))
        elif p[0] in _ROMAN:
            out.append(_ROMAN[p[0]] + "".join(c for c in p[1:].lower() if "a" <= c <= "z"))
        else:
            out.append("".join(c for c in p.lower() if "a" <= c <= "z"))
    return "".join(out) or "x"


# ----------------------------------------------------------------------------- generation

_START, _END = "<s>", "</s>"


@dataclass
class PhonemeModel:
    """Phonotactics of one language, counted over transcribed real words: which phoneme
    follows which (word boundaries included), after one phoneme and after two, and where
    the primary stress falls.

    A sampled word draws each next phoneme from the counts after the two phonemes before it
    with probability ``trigram_weight`` and after the one before it otherwise (trigrams
    alone would mostly give back the training words, bigrams alone allow odd clusters). So
    every adjacent pair of a sampled word, and its first and last phoneme, occur in some
    training word. Its stress falls on a vowel counted from the end as in a training word
    with as many vowels (or the nearest such)."""

    tonal: bool = False
    trigram_weight: float = 0.6
    next_counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    next2_counts: dict[tuple[str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    stress_from_end: dict[int, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))

    @classmethod
    def fit(cls, words: Iterable[Sequence[Phoneme]], tonal: bool = False,
            trigram_weight: float = 0.6) -> PhonemeModel:
        """Count the phoneme pairs, triples and stress positions of ``words``."""
        model = cls(tonal=tonal, trigram_weight=trigram_weight)
        for word in words:
            names = [_START, *(p for p, _ in word), _END]
            for a, b in zip(names, names[1:], strict=False):
                model.next_counts[a][b] += 1
            names = [_START, *names]
            for a, b, c in zip(names, names[1:], names[2:], strict=False):
                model.next2_counts[(a, b)][c] += 1
            vowels = [i for i, (p, _) in enumerate(word) if kind(p, tonal) == "vowel"]
            stressed = [k for k, i in enumerate(vowels) if word[i][1] == 2]
            if vowels and stressed:
                model.stress_from_end[len(vowels)][len(vowels) - 1 - stressed[0]] += 1
        return model

    def sample(self, rng: np.random.Generator, min_len: int = 2,
               max_len: int = 8, max_vowels: int = 3) -> list[Phoneme] | None:
        """One pseudo-word, or ``None`` when the draw broke a length limit."""
        names: list[str] = []
        prev, cur = _START, _START
        while True:
            use_tri = float(rng.uniform()) < self.trigram_weight
            options = self.next2_counts.get((prev, cur)) if use_tri else None
            options = options or self.next_counts.get(cur)
            if not options:
                return None
            keys = sorted(options)
            p = np.array([options[k] for k in keys], dtype=np.float64)
            prev, cur = cur, keys[int(rng.choice(len(keys), p=p / p.sum()))]
            if cur == _END:
                break
            names.append(cur)
            if len(names) > max_len:
                return None
        vowels = [i for i, n in enumerate(names) if kind(n, self.tonal) == "vowel"]
        if kind(names[0], self.tonal) in ("other", "tone") if names else True:
            return None
        if len(names) < min_len or not vowels or len(vowels) > max_vowels:
            return None
        return self._stress(names, vowels, rng)

    def _stress(self, names: list[str], vowels: list[int],
                rng: np.random.Generator) -> list[Phoneme]:
        n_v = len(vowels)
        counts = self.stress_from_end.get(n_v)
        if not counts and self.stress_from_end:
            nearest = min(self.stress_from_end, key=lambda k: (abs(k - n_v), k))
            counts = self.stress_from_end[nearest]
        if counts:
            keys = sorted(counts)
            p = np.array([counts[k] for k in keys], dtype=np.float64)
            from_end = min(keys[int(rng.choice(len(keys), p=p / p.sum()))], n_v - 1)
        else:
            from_end = n_v - 1
        stressed = vowels[n_v - 1 - from_end]
        return [(n, 2 if i == stressed else 0) for i, n in enumerate(names)]
