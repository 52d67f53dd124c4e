"""Continuous non-target speech for the stream protocol: plain English sentences, spoken
by the built-in synthetic speakers' eSpeak NG voices.

The sentences come from a small grammar (:data:`PATTERNS`) over word lists kept apart
from the built-in synthetic corpus's words (:data:`metavox.data.synth.WORDS`), drawn by a
seeded generator; any word of the run's corpus (and its plain inflections) is left out
too, so a sentence never holds a word that could be enrolled. A sentence's words are its
non-target words (what the rate per 100 non-target words counts).

The voices are the synthetic speakers held out for meta-test (:data:`VOICES`). eSpeak NG
is loaded in a fresh worker process for every call of :func:`speak` (never in the calling
process), which speaks the sentences in order with a seed each: the same sentences give
the same audio (the engine's state carries over between utterances, so order matters).
Needs the ``synth`` extra (``pip install 'metavox[synth]'``).
"""

from __future__ import annotations

import numpy as np

from metavox.data.synth.speakers import SPEAKERS
from metavox.data.synth.vocabulary import WORDS

__all__ = ["PATTERNS", "VOICES", "make_sentences", "speak", "vocabulary"]


def _words(text: str) -> tuple[str, ...]:
    return tuple(w for w in text.split() if w not in WORDS)


#: the word classes of the grammar (none of the synthetic corpus's words)
CLASSES: dict[str, tuple[str, ...]] = {
    "DET": _words("the a this that my your our their his her every some"),
    "ADJ": _words("""
        little old quiet narrow wooden golden silver famous careful gentle clever honest
        ancient modern tiny huge rusty shiny curious patient polite sleepy lonely busy
        crowded muddy frozen sandy rocky cheerful nervous proud strange distant
    """),
    "NOUN": _words("""
        farmer sailor painter baker driver pilot neighbour student captain gardener
        fence harbour basket ladder blanket candle carpet pillow wagon engine
        lantern meadow valley castle tower cottage library museum theatre factory
        parcel envelope journal magazine recipe puzzle violin guitar trumpet drum
        pocket sweater mitten scarf umbrella suitcase statue fountain chimney cabin
    """),
    "VERB": _words("""
        painted carried fixed borrowed opened closed noticed admired repaired
        wrapped polished delivered collected dropped lifted counted ordered returned
        described measured decorated
    """),
    "VERB_I": _words("""
        waited rested arrived stayed worked wandered shouted whistled hurried lingered
        yawned paused smiled
    """),
    "PREP": _words("near behind under beside across along inside beyond around through"),
    "ADV": _words("slowly quietly early later often carefully gladly suddenly twice"),
}
#: the sentence patterns (5 to 9 words)
PATTERNS: tuple[tuple[str, ...], ...] = (
    ("DET", "ADJ", "NOUN", "VERB", "DET", "NOUN"),
    ("DET", "NOUN", "VERB", "DET", "ADJ", "NOUN", "PREP", "DET", "NOUN"),
    ("DET", "NOUN", "VERB", "DET", "NOUN", "ADV"),
    ("DET", "ADJ", "NOUN", "VERB_I", "PREP", "DET", "NOUN"),
    ("DET", "NOUN", "VERB_I", "ADV"),
    ("DET", "NOUN", "ADV", "VERB", "DET", "ADJ", "NOUN"),
    ("DET", "ADJ", "NOUN", "VERB_I", "ADV", "PREP", "DET", "NOUN"),
)
#: the voices: the built-in synthetic speakers held out for meta-test
VOICES: tuple[str, ...] = tuple(s.id for s in SPEAKERS if s.split == "test")


def _forms(word: str) -> set[str]:
    """``word`` and its plain inflections (what a sentence must not hold either)."""
    w = word.lower()
    stem = w[:-1] if w.endswith("e") else w
    return {w, w + "s", w + "es", w + "ed", w + "d", stem + "ing", w + "ing"}


def vocabulary(exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, tuple[str, ...]]:
    """The grammar's word classes without the words in ``exclude`` (any case) and their
    plain inflections."""
    banned = set().union(*(_forms(w) for w in exclude)) if exclude else set()
    out = {k: tuple(dict.fromkeys(w for w in ws if w not in banned))
           for k, ws in CLASSES.items()}
    empty = [k for k, ws in out.items() if not ws]
    if empty:
        raise ValueError(f"no sentence words left in {empty} once the corpus's are excluded")
    return out


def make_sentences(words: int, rng: np.random.Generator,
                   exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Sentences drawn with ``rng`` from the grammar, at least ``words`` words in all, none
    of them in ``exclude`` (nor an inflection of one)."""
    vocab = vocabulary(exclude)
    out, count = [], 0
    while count < words:
        pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
        out.append(" ".join(str(rng.choice(vocab[c])) for c in pattern))
        count += len(pattern)
    return out


def _speak_worker(conn, jobs: list[tuple[str, str, int]]) -> None:
    """Worker process: speak each ``(speaker id, text, seed)`` in order, send the audio."""
    import traceback

    try:
        from scipy.signal import resample_poly

        from metavox.data.synth.engine import get_engine
        from metavox.data.synth.generate import ENGINE_VOLUME, SAMPLE_RATE, _resampler, _trim
        from metavox.data.synth.speakers import speaker_by_id

        engine = get_engine()
        up, down, taps = _resampler(engine.sample_rate)
        out = []
        for speaker_id, text, seed in jobs:
            s = speaker_by_id(speaker_id)
            engine.set_voice(s.voice)
            raw = engine.synthesize(text, rate=s.rate, pitch=s.pitch,
                                    pitch_range=s.pitch_range, seed=seed,
                                    volume=ENGINE_VOLUME)
            x = resample_poly(raw.astype(np.float64) / 32768.0, up, down, window=taps)
            x = _trim(x, SAMPLE_RATE)
            out.append((0.5 * x / max(float(np.abs(x).max()), 1e-12)).astype(np.float32))
        conn.send(("done", out))
    except BaseException:  # report everything to the caller
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def speak(jobs: list[tuple[str, str, int]], sample_rate: int) -> list[np.ndarray]:
    """The audio (float32 at ``sample_rate``, trimmed to the speech) of each sentence
    ``(speaker id, text, seed)``, spoken in order by a fresh eSpeak NG worker process."""
    from metavox.data.synth.engine import engine_available
    from metavox.data.synth.generate import SAMPLE_RATE, _mp_context

    if not jobs:
        return []
    if not engine_available():
        raise ValueError("sentence streams speak with eSpeak NG, an optional extra: "
                         "pip install 'metavox[synth]'")
    ctx = _mp_context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_speak_worker, args=(send, list(jobs)),
                       name="metavox-sentences", daemon=True)
    proc.start()
    send.close()
    try:
        msg = recv.recv()
    except EOFError:
        msg = ("error", f"the speech worker stopped (exit code {proc.exitcode})")
    finally:
        proc.join()
        recv.close()
    if msg[0] != "done":
        raise RuntimeError(f"speaking the sentences failed: {msg[1]}")
    audio = msg[1]
    if sample_rate != SAMPLE_RATE:
        import math

        from scipy.signal import resample_poly

        g = math.gcd(sample_rate, SAMPLE_RATE)
        audio = [resample_poly(a, sample_rate // g, SAMPLE_RATE // g).astype(np.float32)
                 for a in audio]
    return audio
