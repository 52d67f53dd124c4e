"""The multilingual word bank: thousands of words in 14 languages, with near-homophones.

An opt-in second synthetic corpus for meta-training a word-agnostic detector
(``metavox data synth --bank``); the default corpus (:mod:`.generate`) is unchanged. The
folder has the default corpus's layout plus two files::

    {out}/manifest.csv      the default columns + language, kind, group, phonemes, background
    {out}/splits.json       word and speaker roles (words split by near-homophone family)
    {out}/homophones.json   word -> the other words of its near-homophone family
    {out}/lexicon.json      every word: language, kind, phonemes, family, split
    {out}/synth.json        settings, status, timing
    {out}/clips/{word}/{speaker}_{rep}.wav

Words. For each language, eSpeak NG transcribes the seed words (:mod:`.seeds`, a few dozen
everyday words) and the numbers 0-100 into phoneme mnemonics. The seed words enter the bank
as its real words; a phoneme model fitted to all the transcriptions (next-phoneme counts
after one and after two phonemes, :class:`~.phonemes.PhonemeModel`) generates pseudo-words
until the language has its share.
A seeded draw picks about two words in five as the bases of near-homophone families: one or
two more words, each the base with one phoneme replaced by a similar one of the language
(:func:`~.phonemes.neighbours`). Every word is spoken from its phonemes (``[[...]]``), and
kept only if eSpeak reads that string back as exactly its phonemes. Labels are
``{language}-{rough ASCII spelling}`` (``-2``, ``-3`` on collisions).

Speakers are the built-in speakers' voice variants, pitches and rates; each says every word
in the word's own language (voice ``{language}+{variant}``), so the default protocol's
held-out voices stay held out. Families, not words, are assigned to splits (80/10/10 by a
seeded hash), so a word and its near-homophones always share a split.

Backgrounds. Given a folder of recordings (e.g. Speech Commands' ``_silence_`` or
``_background_noise_``), each clip mixes a random 1 s segment of a random recording under the
speech at the clip's SNR instead of the generated coloured noise; the manifest names the
recording and offset. The folder is read, never copied.

Same settings, same seed, same eSpeak NG build -> the same bytes, for any number of
workers; an interrupted run resumes (per-speaker records as in :mod:`.generate`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from metavox.data.synth import generate as gen
from metavox.data.synth.phonemes import (
    Phoneme,
    PhonemeModel,
    neighbours,
    parse_transcription,
    read_phoneme_tables,
    romanise,
    speakable,
    spell,
    table_mnemonics,
)
from metavox.data.synth.seeds import SEED_WORDS
from metavox.data.synth.speakers import SPEAKERS, Speaker, select_speakers
from metavox.storage import atomic_write, cache_root

__all__ = [
    "BANK_NAME",
    "LANGUAGES",
    "DEFAULT_BANK_WORDS",
    "DEFAULT_BANK_SPEAKERS",
    "DEFAULT_BANK_REPS",
    "BANK_COLUMNS",
    "BankResult",
    "default_bank_dir",
    "build_lexicon",
    "background_files",
    "background_segment",
    "synthesize_bank",
]

BANK_NAME = "synth-bank-v1"
#: Bump when the word or clip recipe changes: a bank made by another version is not resumed.
BANK_VERSION = 2  # 2: phoneme input switched on (1 read the mnemonics as text)

#: language code -> (eSpeak NG voice, phoneme table, tonal). All ship with espeakng-loader.
LANGUAGES: dict[str, tuple[str, str, bool]] = {
    "en": ("en", "en", False), "de": ("de", "de", False), "fr": ("fr", "fr", False),
    "es": ("es", "es", False), "it": ("it", "it", False), "pt": ("pt", "pt-pt", False),
    "nl": ("nl", "nl", False), "pl": ("pl", "pl", False), "ru": ("ru", "ru", False),
    "hi": ("hi", "hi", False), "tr": ("tr", "tr", False), "sw": ("sw", "sw", False),
    "vi": ("vi", "vi", True), "cmn": ("cmn", "cmn", True),
}
DEFAULT_BANK_WORDS = 3000
DEFAULT_BANK_SPEAKERS = 8  # the first 8 built-in speakers: 6 train, 1 val, 1 test
DEFAULT_BANK_REPS = 2
FAMILY_SHARE = 0.4  # fraction of words that start a near-homophone family
MAX_VARIANTS = 2  # near-homophones per family base
MIN_SPEECH_S = 0.12  # words eSpeak speaks shorter than this (at 175 wpm) are left out
SPLIT_SHARES = (("test", 0.1), ("val", 0.1))  # the rest is "train"

LEXICON = "lexicon.json"
HOMOPHONES = "homophones.json"
_AUDIO_EXTS = (".wav", ".flac", ".ogg")

BANK_COLUMNS: tuple[str, ...] = gen.MANIFEST_COLUMNS + (
    "language", "kind", "group", "phonemes", "background", "background_offset",
)


def default_bank_dir() -> Path:
    """``$METAVOX_CACHE`` (else ``$XDG_CACHE_HOME`` or ``~/.cache`` + ``/metavox``) +
    ``/synth-bank-v1``."""
    return cache_root() / BANK_NAME


# ----------------------------------------------------------------------------- words


def _rng(seed: int, *key: str) -> np.random.Generator:
    digest = hashlib.blake2b("|".join((str(BANK_VERSION), str(seed), *key)).encode(),
                             digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _family_split(seed: int, base: str) -> str:
    u = float(_rng(seed, "split", base).uniform())
    for name, share in SPLIT_SHARES:
        if u < share:
            return name
        u -= share
    return "train"


def _shares(total: int, languages: Sequence[str]) -> dict[str, int]:
    per, extra = divmod(total, len(languages))
    return {lang: per + (i < extra) for i, lang in enumerate(languages)}


def build_lexicon(
    transcribe: Callable[[str, str], str],
    phontab: bytes,
    *,
    languages: Sequence[str],
    n_words: int,
    seed: int,
    audible: Callable[[str, str], bool] | None = None,
) -> list[dict[str, Any]]:
    """The bank's words: ``n_words`` split evenly over ``languages``.

    ``transcribe(voice, text)`` is eSpeak's transcription with ``_`` between phonemes;
    ``phontab`` the bytes of eSpeak's phoneme tables; ``audible(voice, phonemes)``, if
    given, rejects words eSpeak speaks as (nearly) nothing. Each entry: ``label``, ``language``,
    ``kind`` (``real``, ``pseudo`` or ``variant``), ``text`` (a real word's spelling),
    ``phonemes`` (eSpeak mnemonics, stress marks included), ``tokens`` (the phonemes
    without stress), ``group`` (the family's base label) and ``split``.
    """
    tables = read_phoneme_tables(phontab)
    out: list[dict[str, Any]] = []
    labels: set[str] = set()
    spoken: set[tuple[str, tuple[str, ...]]] = set()
    for lang, quota in _shares(n_words, languages).items():
        out.extend(_language_words(lang, quota, transcribe, tables, seed, audible, labels,
                                   spoken))
    for w in out:
        w["split"] = _family_split(seed, w["group"])
    return out


def _language_words(lang: str, quota: int, transcribe: Callable[[str, str], str],
                    tables: dict[str, tuple[str | None, tuple[str, ...]]], seed: int,
                    audible: Callable[[str, str], bool] | None, labels: set[str],
                    spoken: set[tuple[str, tuple[str, ...]]]) -> list[dict[str, Any]]:
    """``quota`` words of one language for :func:`build_lexicon` (``labels`` and
    ``spoken`` are updated with them)."""
    voice, table, tonal = LANGUAGES[lang]
    mnem = table_mnemonics(tables, table)
    real: list[tuple[str, list[Phoneme]]] = []
    corpus: list[list[Phoneme]] = []
    for text in (*SEED_WORDS[lang], *map(str, range(101))):
        ph = parse_transcription(transcribe(voice, text), mnem, tonal)
        if ph is None or not speakable(ph, mnem):
            continue
        corpus.append(ph)
        if not text.isdigit():
            real.append((text, ph))
    if not corpus:
        raise gen.SynthError(f"eSpeak NG transcribed none of the {lang} seed words")
    inventory = sorted({p for w in corpus for p, _ in w})
    model = PhonemeModel.fit(corpus, tonal=tonal)
    rng = _rng(seed, "words", lang)
    words: list[dict[str, Any]] = []

    def add(ph: list[Phoneme], kind: str, text: str, group: str | None) -> str | None:
        key = (lang, tuple(p for p, _ in ph))
        if key in spoken or not speakable(ph, mnem):
            return None
        if audible is not None and not audible(voice, spell(ph)):
            return None
        base = f"{lang}-{romanise(ph)}"[:40]
        label, k = base, 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        spoken.add(key)
        labels.add(label)
        words.append({"label": label, "language": lang, "kind": kind, "text": text,
                      "phonemes": spell(ph), "tokens": [p for p, _ in ph],
                      "group": group or label})
        return label

    def variants(ph: list[Phoneme], room: int) -> list[list[Phoneme]]:
        found: list[list[Phoneme]] = []
        slots = [int(i) for i in rng.permutation(len(ph))]
        for i in slots:
            subs = neighbours(ph[i][0], inventory, tonal)
            if not subs:
                continue
            new = list(ph)
            new[i] = (subs[int(rng.integers(len(subs)))], ph[i][1])
            key = (lang, tuple(p for p, _ in new))
            if key not in spoken and all(new != f for f in found):
                found.append(new)
            if len(found) >= room:
                break
        return found

    def fill(ph: list[Phoneme], kind: str, text: str) -> None:
        room = quota - len(words)
        if room <= 0:
            return
        family = room > 1 and float(rng.uniform()) < FAMILY_SHARE
        label = add(ph, kind, text, None)
        if label is None or not family:
            return
        n_var = int(rng.integers(1, MAX_VARIANTS + 1))
        for var in variants(ph, min(n_var, quota - len(words))):
            add(var, "variant", "", label)

    for text, ph in real:
        fill(ph, "real", text)
    tries = 0
    while len(words) < quota:
        tries += 1
        if tries > 200 * quota + 1000:
            raise gen.SynthError(f"could not make {quota} distinct {lang} words")
        ph = model.sample(rng)
        if ph is not None:
            fill(ph, "pseudo", "")
    return words


def homophone_map(lexicon: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """word -> the other words of its near-homophone family (words in families only)."""
    families: dict[str, list[str]] = {}
    for w in lexicon:
        families.setdefault(w["group"], []).append(w["label"])
    return {label: [o for o in members if o != label]
            for members in families.values() if len(members) > 1 for label in members}


# ----------------------------------------------------------------------------- backgrounds


def background_files(folder: str | os.PathLike[str]) -> list[str]:
    """The recordings under ``folder`` (.wav, .flac, .ogg; recursive), as sorted relative
    paths. Raises :class:`SynthError` when there are none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise gen.SynthError(f"background folder {root} does not exist")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.suffix.lower() in _AUDIO_EXTS and p.is_file())
    if not files:
        raise gen.SynthError(f"background folder {root} holds no .wav, .flac or .ogg files")
    return files


@lru_cache(maxsize=4096)
def _load_background(path: str) -> np.ndarray:
    """A recording as float64 mono at ``SAMPLE_RATE``."""
    import soundfile as sf
    from scipy.signal import resample_poly

    try:
        x, sr = sf.read(path, dtype="float64", always_2d=True)
    except (OSError, RuntimeError) as err:
        raise gen.SynthError(f"cannot read background recording {path}: {err}") from None
    x = x.mean(axis=1)
    if sr != gen.SAMPLE_RATE:
        g = np.gcd(int(sr), gen.SAMPLE_RATE)
        x = resample_poly(x, gen.SAMPLE_RATE // g, int(sr) // g)
    return x


def background_segment(recording: np.ndarray, n: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, int] | None:
    """A random ``n``-sample segment of ``recording`` (tiled if shorter), scaled to unit
    RMS, and its start; ``None`` when the segment is (nearly) digital silence."""
    if len(recording) == 0:
        return None
    if len(recording) < n:
        recording = np.tile(recording, -(-n // len(recording)))
    start = int(rng.integers(0, len(recording) - n + 1))
    seg = recording[start: start + n] - float(np.mean(recording[start: start + n]))
    rms = float(np.sqrt(np.mean(seg**2)))
    if rms < 1e-5:
        return None
    return seg / rms, start


# ----------------------------------------------------------------------------- workers


def _row(plan: gen.ClipPlan, got: dict[str, Any], word: dict[str, Any], voice: str,
         background: str, bg_offset: float | None) -> dict[str, str]:
    s = plan.speaker
    ws = word["split"]
    return {
        "path": plan.relpath, "label": plan.word, "speaker": s.id, "rep": str(plan.rep),
        "split": ws if ws == s.split else "none", "word_split": ws, "speaker_split": s.split,
        "accent": voice, "variant": s.variant, "register": s.register,
        "pitch": str(plan.pitch), "range": str(plan.pitch_range), "rate": str(got["rate"]),
        "gain_db": f"{plan.gain_db:.2f}", "offset": f"{got['offset']:.4f}",
        "speech_s": f"{got['speech_s']:.4f}", "snr_db": f"{plan.snr_db:.2f}",
        "noise_beta": f"{plan.noise_beta:.3f}" if not background else "",
        "seed": str(plan.seed), "language": word["language"], "kind": word["kind"],
        "group": word["group"], "phonemes": word["phonemes"], "background": background,
        "background_offset": "" if bg_offset is None else f"{bg_offset:.7f}",  # exact
    }


def _csv(rows: Sequence[dict[str, str]]) -> str:
    return gen._csv_text(rows, BANK_COLUMNS)


def _speaker_job(out: Path, speaker: Speaker, lexicon: Sequence[dict[str, Any]], reps: int,
                 seed: int, backgrounds: str | None, send: Callable[[tuple[Any, ...]], None]
                 ) -> tuple[int, str]:
    from metavox.data.synth.engine import get_engine

    engine = get_engine()
    for stale in (out / gen._CLIPS).glob(f"*/.{speaker.id}_*.tmp"):
        stale.unlink(missing_ok=True)
    bg_files = background_files(backgrounds) if backgrounds else []
    n = int(round(gen.SAMPLE_RATE * gen.CLIP_SECONDS))
    rows: list[dict[str, str]] = []
    written = 0
    voice_now = ""
    for word in lexicon:  # grouped by language: one voice change per language
        voice = f"{LANGUAGES[word['language']][0]}+{speaker.variant}"
        if voice != voice_now:
            engine.set_voice(voice)
            voice_now = voice
        for rep in range(reps):
            plan = gen.plan_clip(speaker, word["label"], rep, seed)
            noise, bg_name, bg_off = None, "", None
            if bg_files:
                brng = np.random.default_rng([plan.seed, 2])
                name = bg_files[int(brng.integers(len(bg_files)))]
                seg = background_segment(_load_background(str(Path(backgrounds) / name)),
                                         n, brng)
                if seg is not None:
                    noise, bg_name, bg_off = seg[0], name, seg[1] / gen.SAMPLE_RATE
            audio, got = gen.render_clip(engine, plan, text=f"[[{word['phonemes']}]]",
                                         phonemes=True, noise=noise)
            path = out / plan.relpath
            if not path.exists():
                gen._write_wav(path, audio)
                written += 1
            rows.append(_row(plan, got, word, voice, bg_name, bg_off))
        send(("progress", reps))
    atomic_write(out / gen._PARTS / f"{speaker.id}.csv", _csv(rows))
    return written, engine.version


def _speaker_main(conn: Any, out: str, speaker_id: str, reps: int, seed: int,
                  backgrounds: str | None) -> None:
    """Worker process: one speaker of the bank, then exit."""
    try:
        speaker = next(s for s in SPEAKERS if s.id == speaker_id)
        lexicon = json.loads((Path(out) / LEXICON).read_text(encoding="utf-8"))["words"]
        written, version = _speaker_job(Path(out), speaker, lexicon, reps, seed, backgrounds,
                                        conn.send)
        conn.send(("done", written, version, time.process_time()))
    except BaseException as err:
        from metavox.data.synth.engine import EngineError

        known = isinstance(err, (gen.SynthError, EngineError))
        conn.send(("error", str(err) if known else traceback.format_exc()))
    finally:
        conn.close()


def _lexicon_main(conn: Any, out: str, languages: list[str], n_words: int, seed: int,
                  config: dict[str, Any]) -> None:
    """Worker process: transcribe with eSpeak NG, build the word list, write lexicon.json."""
    try:
        import espeakng_loader

        from metavox.data.synth.engine import get_engine

        engine = get_engine()

        def transcribe(voice: str, text: str) -> str:
            engine.set_voice(voice)
            return engine.phonemes(text, separator="_")

        def audible(voice: str, phonemes: str) -> bool:
            engine.set_voice(voice)
            raw = engine.synthesize(f"[[{phonemes}]]", rate=175, pitch=50, pitch_range=50,
                                    seed=0, volume=gen.ENGINE_VOLUME, phoneme_input=True)
            speech = gen._trim(raw.astype(np.float64), engine.sample_rate)
            return len(speech) >= MIN_SPEECH_S * engine.sample_rate

        phontab = (Path(espeakng_loader.get_data_path()) / "phontab").read_bytes()
        words = build_lexicon(transcribe, phontab, languages=languages, n_words=n_words,
                              seed=seed, audible=audible)
        atomic_write(Path(out) / LEXICON, json.dumps(
            {"config": config, "engine": engine.version, "words": words},
            ensure_ascii=False, indent=0) + "\n")
        conn.send(("done", 0, engine.version, time.process_time()))
    except BaseException as err:
        from metavox.data.synth.engine import EngineError

        known = isinstance(err, (gen.SynthError, EngineError, ValueError))
        conn.send(("error", str(err) if known else traceback.format_exc()))
    finally:
        conn.close()


# ----------------------------------------------------------------------------- the bank


@dataclass(frozen=True)
class BankResult:
    """What :func:`synthesize_bank` made."""

    out: Path
    manifest: Path
    n_clips: int
    n_written: int
    n_speakers: int
    n_words: int
    languages: tuple[str, ...]
    seconds: float
    workers: int
    engine: str


def _lexicon_ok(out: Path, config: dict[str, Any]) -> list[dict[str, Any]] | None:
    data = gen._read_json(out / LEXICON)
    if data is None or data.get("config") != config or not isinstance(data.get("words"), list):
        return None
    return data["words"]


def synthesize_bank(
    out: str | os.PathLike[str] | None = None,
    *,
    words: int = DEFAULT_BANK_WORDS,
    languages: Sequence[str] | None = None,
    speakers: int | Sequence[str] = DEFAULT_BANK_SPEAKERS,
    reps: int = DEFAULT_BANK_REPS,
    seed: int = gen.DEFAULT_SEED,
    backgrounds: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool | gen.Progress | None = False,
) -> BankResult:
    """Generate (or finish) the multilingual word bank in ``out`` (default
    :func:`default_bank_dir`).

    ``words``: how many words in all (near-homophones included), split evenly over
    ``languages`` (default all of :data:`LANGUAGES`); ``speakers``: how many built-in
    speakers (the first n) or their ids; ``reps``: clips per (speaker, word);
    ``backgrounds``: a folder of recordings to mix under the speech instead of coloured
    noise; the rest as :func:`~metavox.data.synth.synthesize_corpus`.
    """
    from metavox.data.synth.engine import engine_available

    t0 = time.perf_counter()
    langs = tuple(LANGUAGES if languages is None else dict.fromkeys(languages))
    unknown = [lang for lang in langs if lang not in LANGUAGES]
    if unknown or not langs:
        raise gen.SynthError(f"unknown languages {unknown}; known: {', '.join(LANGUAGES)}"
                             if unknown else "the language list is empty")
    if not isinstance(words, int) or words < len(langs):
        raise gen.SynthError(f"words must be an integer >= the number of languages "
                             f"({len(langs)}), got {words!r}")
    if not isinstance(reps, int) or reps < 1:
        raise gen.SynthError(f"reps must be a positive integer, got {reps!r}")
    seed = int(seed)
    if not 0 <= seed < 2**63:
        raise gen.SynthError(f"seed must be in [0, 2**63), got {seed}")
    if isinstance(speakers, int):
        try:
            spk = select_speakers(speakers)
        except ValueError as err:
            raise gen.SynthError(str(err)) from None
    else:
        known = {s.id: s for s in SPEAKERS}
        bad = [s for s in speakers if s not in known]
        if bad or not speakers:
            raise gen.SynthError(f"unknown speaker ids {bad[:5]}; known: s00..s63"
                                 if bad else "the speaker list is empty")
        spk = tuple(known[s] for s in dict.fromkeys(speakers))
    bg = None
    bg_config: dict[str, Any] | None = None
    if backgrounds is not None:
        bg = str(Path(backgrounds).expanduser().resolve())
        files = background_files(bg)
        bg_config = {"folder": bg, "files": len(files),
                     "names": hashlib.blake2b("\n".join(files).encode(),
                                              digest_size=8).hexdigest()}
    out_p = Path(out if out is not None else default_bank_dir()).expanduser()
    lex_config = {"bank": BANK_VERSION, "generator": gen.GENERATOR_VERSION, "seed": seed,
                  "words": words, "languages": list(langs)}
    config = {**lex_config, "reps": reps, "backgrounds": bg_config,
              "sample_rate": gen.SAMPLE_RATE, "clip_seconds": gen.CLIP_SECONDS}
    gen._prepare_folder(out_p, config, overwrite, what="the word bank",
                        files=(LEXICON, HOMOPHONES))
    lexicon = _lexicon_ok(out_p, lex_config)
    if not engine_available() and (lexicon is None or not all(
            gen._speaker_done(out_p, s, [w["label"] for w in lexicon], reps) for s in spk)):
        raise gen.SynthError("generating the word bank needs eSpeak NG, an optional extra: "
                             "pip install 'metavox[synth]'")
    old = gen._read_json(out_p / gen.INFO) or {}
    info: dict[str, Any] = {"name": BANK_NAME, "status": "incomplete", "config": config}
    atomic_write(out_p / gen.INFO, json.dumps({**old, **info}, indent=1) + "\n")
    if lexicon is None:
        gen.run_jobs([("lexicon", _lexicon_main,
                       (str(out_p), list(langs), words, seed, lex_config))], 1,
                     lambda n: None, lambda _: _lexicon_ok(out_p, lex_config) is not None)
        lexicon = _lexicon_ok(out_p, lex_config)
        assert lexicon is not None
    labels = [w["label"] for w in lexicon]
    todo = [s for s in spk if not gen._speaker_done(out_p, s, labels, reps)]
    if workers is None:
        try:
            workers = len(os.sched_getaffinity(0))
        except AttributeError:
            workers = os.cpu_count() or 1
    workers = max(1, min(int(workers), max(1, len(todo))))
    total = len(todo) * len(labels) * reps
    report, bar = gen._progress_fn(progress, total)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        report(done, total)

    jobs = [(s.id, _speaker_main, (str(out_p), s.id, reps, seed, bg)) for s in todo]
    by_id = {s.id: s for s in todo}
    try:
        stats = (gen.run_jobs(jobs, workers, tick,
                              lambda sid: gen._speaker_done(out_p, by_id[sid], labels, reps))
                 if todo else {"written": 0, "engine": "", "worker_cpu_s": 0.0})
    finally:
        if bar is not None:
            bar.close()

    rows: list[dict[str, str]] = []
    for s in spk:
        with open(out_p / gen._PARTS / f"{s.id}.csv", newline="", encoding="utf-8") as fh:
            rows.extend(csv.DictReader(fh))
    rows.sort(key=lambda r: r["path"])
    splits = {
        "words": {k: [w["label"] for w in lexicon if w["split"] == k]
                  for k in ("train", "val", "test")},
        "speakers": {k: [s.id for s in spk if s.split == k] for k in ("train", "val", "test")},
        "languages": list(langs),
        "note": "meta-train on train words x train speakers, validate on val x val, test on "
                "test x test (manifest column 'split'); other clips have split 'none'. A "
                "word and its near-homophones (homophones.json) share a split",
    }
    atomic_write(out_p / gen.SPLITS, json.dumps(splits, indent=1, ensure_ascii=False) + "\n")
    atomic_write(out_p / HOMOPHONES,
                 json.dumps(homophone_map(lexicon), indent=0, ensure_ascii=False) + "\n")
    atomic_write(out_p / gen.MANIFEST, _csv(rows))
    seconds = time.perf_counter() - t0
    counts = {lang: sum(w["language"] == lang for w in lexicon) for lang in langs}
    info.update({
        "status": "complete", "speakers": [s.id for s in spk], "clips": len(rows),
        "words_per_language": counts,
        "kinds": {k: sum(w["kind"] == k for w in lexicon) for k in ("real", "pseudo",
                                                                     "variant")},
        "engine": f"eSpeak NG {stats['engine']}" if stats["engine"] else old.get("engine", ""),
        "last_run": {"seconds": round(seconds, 1), "workers": workers,
                     "worker_cpu_s": round(stats["worker_cpu_s"], 1),
                     "clips_written": stats["written"], "speakers_run": len(todo)},
        "synthesiser": "eSpeak NG (GPL-3.0-or-later), from the espeakng-loader wheel",
    })
    atomic_write(out_p / gen.INFO, json.dumps(info, indent=1) + "\n")
    return BankResult(out_p, out_p / gen.MANIFEST, len(rows), stats["written"], len(spk),
                      len(lexicon), langs, seconds, workers, stats["engine"])
