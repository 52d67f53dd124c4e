"""The built-in synthetic speakers: fixed eSpeak NG voices that play the role of people.

Each speaker is a fixed (accent, voice variant, base pitch, pitch range, base rate). The 64
speakers are balanced between lower ("low", male-like variants) and higher ("high",
female- and child-like variants) voices and spread evenly over eight English accents. Whisper
and breathy voices (little or no voiced pitch) and the robotic, echo-heavy and novelty
variants are left out.

The table is ordered in blocks of eight -- six meta-training speakers (alternating low and
high), one meta-validation and one meta-test speaker -- so that any prefix of 8k speakers is
balanced. The 16 validation and test speakers use voice variants that no training speaker
uses, chosen so that each differs from every training variant by at least 10 % in one of its
formant frequencies (its "vocal tract"): the default protocol tests on voices it has never
heard. Validation and test voices may resemble each other (f4 and aunty, steph and steph2).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACCENTS", "LOW_VARIANTS", "HIGH_VARIANTS", "Speaker", "SPEAKERS",
           "select_speakers", "speaker_by_id"]

#: The eSpeak NG English accents used (all load from the ``espeakng-loader`` data).
ACCENTS: tuple[str, ...] = (
    "en-us", "en", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
    "en-gb-x-rp", "en-us-nyc",
)
#: Voice variants for the lower voices.
LOW_VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Alex", "Andy", "Gene", "Michael", "Mario",
    "antonio", "edward", "travis", "victor", "adam", "benjamin", "Denis", "miguel", "norbert",
    "gustave", "klatt4",
)
#: Voice variants for the higher voices.
HIGH_VARIANTS: tuple[str, ...] = (
    "f1", "f2", "f3", "f4", "f5", "Annie", "steph", "steph2", "aunty", "belinda", "linda",
    "Andrea", "anika", "grandma", "zac",
)


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker.

    ``pitch`` and ``pitch_range`` are on eSpeak's 0-100 scale (50 = the variant's own),
    ``rate`` in words per minute; ``register`` is ``"low"`` or ``"high"``; ``split`` the
    speaker's role in the default protocol (``"train"``, ``"val"`` or ``"test"``).
    """

    id: str
    accent: str
    variant: str
    pitch: int
    pitch_range: int
    rate: int
    register: str
    split: str

    @property
    def voice(self) -> str:
        """The eSpeak NG voice name, ``accent+variant``."""
        return f"{self.accent}+{self.variant}"


_S = Speaker

#: The curated speakers, in generation order.
SPEAKERS: tuple[Speaker, ...] = (
    _S("s00", "en-029", "Michael", 43, 75, 195, "low", "train"),
    _S("s01", "en-us-nyc", "f1", 48, 44, 173, "high", "train"),
    _S("s02", "en-us", "Denis", 53, 67, 197, "low", "train"),
    _S("s03", "en-gb-scotland", "f5", 41, 61, 190, "high", "train"),
    _S("s04", "en-gb-x-gbclan", "m8", 43, 35, 192, "low", "train"),
    _S("s05", "en-gb-x-rp", "f2", 42, 52, 158, "high", "train"),
    _S("s06", "en", "m2", 69, 47, 178, "low", "val"),
    _S("s07", "en-gb-x-gbcwmd", "f4", 48, 39, 182, "high", "test"),
    _S("s08", "en", "m6", 70, 43, 192, "low", "train"),
    _S("s09", "en-us-nyc", "Andrea", 59, 34, 181, "high", "train"),
    _S("s10", "en-gb-x-gbcwmd", "m3", 63, 46, 165, "low", "train"),
    _S("s11", "en-us", "f1", 59, 67, 176, "high", "train"),
    _S("s12", "en-gb-scotland", "m3", 51, 67, 200, "low", "train"),
    _S("s13", "en-gb-x-rp", "Andrea", 54, 71, 157, "high", "train"),
    _S("s14", "en-gb-x-gbclan", "aunty", 56, 54, 188, "high", "val"),
    _S("s15", "en-029", "m7", 70, 60, 196, "low", "test"),
    _S("s16", "en-gb-scotland", "klatt4", 61, 30, 199, "low", "train"),
    _S("s17", "en-gb-x-gbcwmd", "f1", 49, 39, 159, "high", "train"),
    _S("s18", "en-gb-x-gbclan", "benjamin", 53, 41, 204, "low", "train"),
    _S("s19", "en", "Andrea", 41, 25, 194, "high", "train"),
    _S("s20", "en-us", "adam", 61, 61, 157, "low", "train"),
    _S("s21", "en-029", "belinda", 54, 69, 169, "high", "train"),
    _S("s22", "en-gb-x-rp", "m5", 54, 59, 172, "low", "val"),
    _S("s23", "en-us-nyc", "steph", 49, 51, 169, "high", "test"),
    _S("s24", "en-gb-x-gbcwmd", "Gene", 49, 74, 164, "low", "train"),
    _S("s25", "en", "belinda", 60, 46, 170, "high", "train"),
    _S("s26", "en-gb-x-gbclan", "Gene", 48, 45, 172, "low", "train"),
    _S("s27", "en-029", "linda", 59, 46, 190, "high", "train"),
    _S("s28", "en-us-nyc", "Michael", 63, 49, 194, "low", "train"),
    _S("s29", "en-gb-x-rp", "Annie", 57, 68, 160, "high", "train"),
    _S("s30", "en-us", "steph2", 58, 27, 194, "high", "val"),
    _S("s31", "en-gb-scotland", "Mario", 54, 54, 204, "low", "test"),
    _S("s32", "en-gb-scotland", "Alex", 60, 36, 181, "low", "train"),
    _S("s33", "en", "linda", 54, 60, 203, "high", "train"),
    _S("s34", "en-029", "gustave", 56, 61, 199, "low", "train"),
    _S("s35", "en-gb-x-gbclan", "linda", 44, 74, 181, "high", "train"),
    _S("s36", "en-gb-x-rp", "m8", 70, 68, 171, "low", "train"),
    _S("s37", "en-us-nyc", "f5", 41, 75, 171, "high", "train"),
    _S("s38", "en-gb-x-gbcwmd", "edward", 57, 31, 204, "low", "val"),
    _S("s39", "en-us", "grandma", 51, 56, 195, "high", "test"),
    _S("s40", "en-gb-x-rp", "m1", 50, 41, 171, "low", "train"),
    _S("s41", "en-gb-x-gbcwmd", "belinda", 38, 68, 197, "high", "train"),
    _S("s42", "en-us-nyc", "m1", 57, 41, 191, "low", "train"),
    _S("s43", "en-gb-scotland", "f2", 46, 41, 189, "high", "train"),
    _S("s44", "en-gb-x-gbclan", "victor", 50, 52, 161, "low", "train"),
    _S("s45", "en-us", "f2", 44, 40, 201, "high", "train"),
    _S("s46", "en-029", "f3", 49, 29, 198, "high", "val"),
    _S("s47", "en", "travis", 58, 68, 170, "low", "test"),
    _S("s48", "en-us", "m4", 47, 31, 176, "low", "train"),
    _S("s49", "en-gb-x-gbcwmd", "Annie", 42, 53, 191, "high", "train"),
    _S("s50", "en", "antonio", 69, 75, 179, "low", "train"),
    _S("s51", "en-gb-x-rp", "f5", 60, 25, 164, "high", "train"),
    _S("s52", "en-029", "m6", 40, 74, 182, "low", "train"),
    _S("s53", "en-gb-scotland", "Annie", 40, 59, 166, "high", "train"),
    _S("s54", "en-us-nyc", "Andy", 44, 37, 176, "low", "val"),
    _S("s55", "en-gb-x-gbclan", "anika", 42, 67, 190, "high", "test"),
    _S("s56", "en-us", "Alex", 47, 27, 183, "low", "train"),
    _S("s57", "en-029", "f1", 57, 37, 194, "high", "train"),
    _S("s58", "en-gb-x-gbcwmd", "miguel", 44, 74, 194, "low", "train"),
    _S("s59", "en-gb-x-gbclan", "f5", 61, 28, 187, "high", "train"),
    _S("s60", "en-us-nyc", "m4", 50, 53, 171, "low", "train"),
    _S("s61", "en", "f2", 60, 49, 165, "high", "train"),
    _S("s62", "en-gb-scotland", "zac", 56, 66, 186, "high", "val"),
    _S("s63", "en-gb-x-rp", "norbert", 53, 44, 194, "low", "test"),
)


def select_speakers(n: int | None = None) -> tuple[Speaker, ...]:
    """The first ``n`` built-in speakers (all when ``None``); ``n`` must be 1..64."""
    if n is None:
        return SPEAKERS
    if not 1 <= n <= len(SPEAKERS):
        raise ValueError(f"speakers must be between 1 and {len(SPEAKERS)}, got {n}")
    return SPEAKERS[:n]


def speaker_by_id(speaker_id: str) -> Speaker:
    """The built-in speaker called ``speaker_id`` (``KeyError`` if there is none)."""
    for s in SPEAKERS:
        if s.id == speaker_id:
            return s
    raise KeyError(f"no built-in synthetic speaker {speaker_id!r}")
