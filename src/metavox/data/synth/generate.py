"""Generate the built-in synthetic corpus: spoken words by many synthetic speakers.

The output is an ordinary corpus folder::

    {out}/manifest.csv                      path,label,speaker,... (one row per clip)
    {out}/clips/{word}/{speaker}_{rep}.wav  16 kHz mono 16-bit, 1 s
    {out}/splits.json                       word and speaker roles of the default protocol
    {out}/synth.json                        the settings, status and timing of the run

Each clip: the word spoken by one speaker with a small per-clip pitch, range and rate
jitter, trimmed, peak-normalised, placed at a random offset in the 1 s window, mixed with
coloured noise at a random SNR and scaled to a random peak level (never clipping). Every
parameter is recorded in the manifest.

Determinism. eSpeak NG keeps state between utterances, so each speaker is synthesised by a
fresh worker process, in a fixed order (words, then repetitions), with a per-clip engine
seed; all other randomness comes from per-clip seeds. Same settings, same seed, same eSpeak
NG build -> bit-identical files, whatever the number of workers. A clip depends on
``(seed, speaker, word, rep)`` and on the word list it was generated with.

Resumption. Clips are written to hidden temporary names and renamed into place, so a clip
whose final file exists is complete. A speaker is done when its record (``.parts/``) and
all its clips exist; a rerun regenerates the speakers that are not (rewriting only their
missing clips), and the manifest is written last.

The engine (GPL-3.0-or-later, optional extra ``metavox[synth]``) is loaded only in the
worker processes, never in the calling process.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import shutil
import struct
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import firwin, resample_poly

from metavox.data.synth.speakers import SPEAKERS, Speaker, select_speakers
from metavox.data.synth.vocabulary import WORDS, check_words, word_split
from metavox.storage import atomic_write, cache_root

__all__ = [
    "CORPUS_NAME",
    "SAMPLE_RATE",
    "CLIP_SECONDS",
    "DEFAULT_REPS",
    "DEFAULT_SEED",
    "MANIFEST_COLUMNS",
    "SynthError",
    "ClipPlan",
    "SynthResult",
    "plan_clip",
    "clip_relpath",
    "default_corpus_dir",
    "corpus_complete",
    "synthesize_corpus",
    "ensure_default_corpus",
]

CORPUS_NAME = "synth-v1"
#: Bump when the clip recipe changes: a corpus made by another version is not resumed.
GENERATOR_VERSION = 1
SAMPLE_RATE = 16000
CLIP_SECONDS = 1.0
DEFAULT_REPS = 3
DEFAULT_SEED = 0

MANIFEST = "manifest.csv"
INFO = "synth.json"
SPLITS = "splits.json"
_PARTS = ".parts"
_CLIPS = "clips"

# The per-clip recipe.
PITCH_JITTER = 3  # +- on eSpeak's 0-100 pitch scale (about +-4 %)
RANGE_JITTER = 5  # +- on the 0-100 pitch-range scale
RATE_JITTER = 0.06  # +- relative
GAIN_DB = (-20.0, -1.0)  # peak level of the finished clip, dBFS
SNR_DB = (10.0, 40.0)  # speech-to-noise ratio over the spoken part
NOISE_BETA = (0.0, 2.0)  # noise power spectrum ~ 1/f**beta: 0 white, 1 pink, 2 brown
ENGINE_VOLUME = 25  # eSpeak volume: leaves headroom so that no voice hits its limiter
MAX_SPEECH = 0.92  # longest spoken part, as a fraction of the window
_TRIM_DB = -40.0  # trimming threshold relative to the peak
_TRIM_PAD = 0.01  # seconds kept on each side of the spoken part

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path", "label", "speaker", "rep", "split", "word_split", "speaker_split", "accent",
    "variant", "register", "pitch", "range", "rate", "gain_db", "offset", "speech_s",
    "snr_db", "noise_beta", "seed",
)

Progress = Callable[[int, int], None]


class SynthError(RuntimeError):
    """The synthetic corpus cannot be generated (missing extra, bad settings, bad folder)."""


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ClipPlan:
    """Everything that decides one clip except the engine's own state."""

    word: str
    speaker: Speaker
    rep: int
    seed: int  # per-clip seed (engine and noise)
    pitch: int
    pitch_range: int
    rate: int
    gain_db: float
    offset_frac: float  # placement: fraction of the free space before the speech
    snr_db: float
    noise_beta: float

    @property
    def relpath(self) -> str:
        """Path of the clip relative to the corpus folder."""
        return clip_relpath(self.word, self.speaker.id, self.rep)


def clip_relpath(word: str, speaker_id: str, rep: int) -> str:
    """``clips/{word}/{speaker}_{rep}.wav``."""
    return f"{_CLIPS}/{word}/{speaker_id}_{rep}.wav"


def clip_seed(seed: int, speaker_id: str, word: str, rep: int) -> int:
    """A 63-bit seed that depends only on ``(seed, speaker, word, rep)``."""
    key = f"{GENERATOR_VERSION}|{seed}|{speaker_id}|{word}|{rep}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def _clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(value)))


def plan_clip(speaker: Speaker, word: str, rep: int, seed: int) -> ClipPlan:
    """Draw the per-clip parameters of ``word`` by ``speaker``, repetition ``rep``."""
    cs = clip_seed(seed, speaker.id, word, rep)
    rng = np.random.default_rng([cs, 0])
    pitch = _clamp(speaker.pitch + int(rng.integers(-PITCH_JITTER, PITCH_JITTER + 1)), 0, 100)
    prange = _clamp(speaker.pitch_range + int(rng.integers(-RANGE_JITTER, RANGE_JITTER + 1)),
                    0, 100)
    rate = _clamp(round(speaker.rate * (1 + float(rng.uniform(-RATE_JITTER, RATE_JITTER)))),
                  80, 450)
    return ClipPlan(
        word=word,
        speaker=speaker,
        rep=rep,
        seed=cs,
        pitch=pitch,
        pitch_range=prange,
        rate=rate,
        gain_db=round(float(rng.uniform(*GAIN_DB)), 2),
        offset_frac=float(rng.uniform()),
        snr_db=round(float(rng.uniform(*SNR_DB)), 2),
        noise_beta=round(float(rng.uniform(*NOISE_BETA)), 3),
    )


# ----------------------------------------------------------------------------- rendering


def _trim(x: np.ndarray, sr: int) -> np.ndarray:
    """The spoken part of ``x``: from the first to the last sample above -40 dB of the peak,
    padded by 10 ms."""
    a = np.abs(x)
    peak = float(a.max()) if a.size else 0.0
    if peak <= 0.0:
        return x[:0]
    idx = np.flatnonzero(a > peak * 10 ** (_TRIM_DB / 20))
    pad = int(_TRIM_PAD * sr)
    return x[max(0, idx[0] - pad): idx[-1] + 1 + pad]


@lru_cache(maxsize=4)
def _resampler(sr_in: int) -> tuple[int, int, np.ndarray]:
    """Polyphase ratio and low-pass filter from ``sr_in`` to ``SAMPLE_RATE``, designed once
    (a Kaiser-windowed sinc, as ``resample_poly`` would design on every call)."""
    g = math.gcd(SAMPLE_RATE, sr_in)
    up, down = SAMPLE_RATE // g, sr_in // g
    half = 10 * max(up, down)
    taps = firwin(2 * half + 1, 1.0 / max(up, down), window=("kaiser", 5.0)) * up
    return up, down, taps


@lru_cache(maxsize=4)
def _log_freqs(n: int, sr: int) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1.0 / sr)
    f[0] = f[1]
    return np.log(f / 1000.0)


def _coloured_noise(rng: np.random.Generator, n: int, beta: float, sr: int) -> np.ndarray:
    """Unit-RMS Gaussian noise with power spectrum ~ 1/f**beta, drawn in the frequency
    domain (complex Gaussian bins, shaped, one inverse FFT)."""
    bins = rng.standard_normal((2, n // 2 + 1))
    spec = (bins[0] + 1j * bins[1]) * np.exp(_log_freqs(n, sr) * (-beta / 2.0))
    spec[0] = 0.0  # no DC offset
    noise = np.fft.irfft(spec, n)
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def mix_at_snr(clean: np.ndarray, speech_power: float, noise: np.ndarray,
               snr_db: float) -> np.ndarray:
    """``clean`` plus unit-RMS ``noise`` scaled so that ``speech_power`` over the added
    noise's power is ``snr_db``."""
    return clean + noise * math.sqrt(speech_power / 10 ** (snr_db / 10))


def render_clip(engine: Any, plan: ClipPlan, *, text: str | None = None,
                phonemes: bool = False,
                noise: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float | int]]:
    """Synthesise and finish one clip with ``engine`` (voice already set to the speaker's).

    ``text``: what to speak (default ``plan.word``); ``phonemes``: ``text`` is eSpeak
    phoneme mnemonics inside ``[[ ]]``;
    ``noise``: unit-RMS noise of the clip's length to mix under the speech (default:
    coloured noise drawn from the plan).
    Returns int16 samples (``SAMPLE_RATE``, ``CLIP_SECONDS``) and the values decided while
    rendering: the final ``rate`` (raised when the word would not fit the window), the
    ``offset`` and the duration ``speech_s`` of the spoken part, in seconds.
    """
    n = int(round(SAMPLE_RATE * CLIP_SECONDS))
    max_len = int(MAX_SPEECH * n)
    up, down, taps = _resampler(engine.sample_rate)
    rate = plan.rate
    speech = np.zeros(0)
    extra = {"phoneme_input": True} if phonemes else {}
    for _ in range(4):
        raw = engine.synthesize(plan.word if text is None else text, rate=rate, pitch=plan.pitch,
                                pitch_range=plan.pitch_range, seed=plan.seed,
                                volume=ENGINE_VOLUME, **extra)
        x = resample_poly(raw.astype(np.float64) / 32768.0, up, down, window=taps)
        speech = _trim(x, SAMPLE_RATE)
        if len(speech) <= max_len or rate >= 450:
            break
        rate = min(450, math.ceil(rate * len(speech) / max_len * 1.03))
    if len(speech) == 0:
        raise SynthError(f"eSpeak NG produced silence for {plan.word!r} ({plan.speaker.voice})")
    if len(speech) > max_len:  # not reached with the built-in words; a safe fallback
        speech = speech[:max_len] * np.linspace(1.0, 0.0, max_len) ** 0.25
    speech = speech / np.abs(speech).max()
    start = int(round(plan.offset_frac * (n - len(speech))))
    clean = np.zeros(n)
    clean[start: start + len(speech)] = speech
    if noise is None:
        rng = np.random.default_rng([plan.seed, 1])
        noise = _coloured_noise(rng, n, plan.noise_beta, SAMPLE_RATE)
    elif noise.shape != (n,):
        raise SynthError(f"the noise has shape {noise.shape}; the clip needs ({n},)")
    mix = mix_at_snr(clean, float(np.mean(speech**2)), noise, plan.snr_db)
    mix *= 10 ** (plan.gain_db / 20) / np.abs(mix).max()
    audio = np.round(mix * 32767.0).astype(np.int16)
    return audio, {"rate": rate, "offset": start / SAMPLE_RATE,
                   "speech_s": len(speech) / SAMPLE_RATE}


def _wav_bytes(audio: np.ndarray) -> bytes:
    """A 16-bit mono PCM WAV file: the canonical 44-byte header, then the samples."""
    data = audio.astype("<i2", copy=False).tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16,
                         1, 1, SAMPLE_RATE, 2 * SAMPLE_RATE, 2, 16, b"data", len(data))
    return header + data


def _write_wav(path: Path, audio: np.ndarray) -> None:
    """Write ``audio`` as a WAV file, atomically (hidden temporary file, then rename)."""
    atomic_write(path, _wav_bytes(audio))


def _row(plan: ClipPlan, got: dict[str, float | int]) -> dict[str, str]:
    s = plan.speaker
    ws = word_split(plan.word)
    return {
        "path": plan.relpath, "label": plan.word, "speaker": s.id, "rep": str(plan.rep),
        "split": ws if ws == s.split else "none", "word_split": ws, "speaker_split": s.split,
        "accent": s.accent, "variant": s.variant, "register": s.register,
        "pitch": str(plan.pitch), "range": str(plan.pitch_range), "rate": str(got["rate"]),
        "gain_db": f"{plan.gain_db:.2f}", "offset": f"{got['offset']:.4f}",
        "speech_s": f"{got['speech_s']:.4f}", "snr_db": f"{plan.snr_db:.2f}",
        "noise_beta": f"{plan.noise_beta:.3f}", "seed": str(plan.seed),
    }


def _csv_text(rows: Sequence[dict[str, str]], columns: Sequence[str] = MANIFEST_COLUMNS
              ) -> str:
    """The manifest's CSV text (``columns``: the word bank's manifest has more)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _speaker_job(out: Path, speaker: Speaker, words: Sequence[str], reps: int, seed: int,
                 send: Callable[[tuple[Any, ...]], None]) -> tuple[int, str]:
    """Synthesise every clip of one speaker, in order, in a fresh engine; write the missing
    ones and the speaker's record. Returns (clips written, engine version)."""
    from metavox.data.synth.engine import get_engine

    engine = get_engine()
    for stale in (out / _CLIPS).glob(f"*/.{speaker.id}_*.tmp"):
        stale.unlink(missing_ok=True)
    engine.set_voice(speaker.voice)
    rows: list[dict[str, str]] = []
    written = 0
    for word in words:
        for rep in range(reps):
            plan = plan_clip(speaker, word, rep, seed)
            audio, got = render_clip(engine, plan)
            path = out / plan.relpath
            if not path.exists():
                _write_wav(path, audio)
                written += 1
            rows.append(_row(plan, got))
        send(("progress", reps))
    atomic_write(out / _PARTS / f"{speaker.id}.csv", _csv_text(rows))
    return written, engine.version


def _worker_main(conn: Any, out: str, speaker_id: str, words: list[str], reps: int,
                 seed: int) -> None:
    """Entry point of a worker process: one speaker, then exit."""
    try:
        speaker = next(s for s in SPEAKERS if s.id == speaker_id)
        written, version = _speaker_job(Path(out), speaker, words, reps, seed, conn.send)
        conn.send(("done", written, version, time.process_time()))
    except BaseException as err:  # report everything, including KeyboardInterrupt
        from metavox.data.synth.engine import EngineError

        known = isinstance(err, (SynthError, EngineError))
        conn.send(("error", str(err) if known else traceback.format_exc()))
    finally:
        conn.close()


# ----------------------------------------------------------------------------- the corpus


def default_corpus_dir() -> Path:
    """``$METAVOX_CACHE/synth-v1`` if set, else ``$XDG_CACHE_HOME`` or ``~/.cache`` +
    ``/metavox/synth-v1``."""
    return cache_root() / CORPUS_NAME


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize_corpus` made."""

    out: Path
    manifest: Path
    n_clips: int  # clips in the manifest
    n_written: int  # clips written by this call (0 when everything was already there)
    n_speakers: int
    n_words: int
    seconds: float
    workers: int
    engine: str  # eSpeak NG version used by this call's workers ("" if none ran)
    worker_cpu_s: float = 0.0  # CPU time of this call's worker processes


def _config(words: Sequence[str], reps: int, seed: int) -> dict[str, Any]:
    return {"generator": GENERATOR_VERSION, "seed": seed, "reps": reps, "words": list(words),
            "sample_rate": SAMPLE_RATE, "clip_seconds": CLIP_SECONDS}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _speaker_done(out: Path, speaker: Speaker, words: Sequence[str], reps: int) -> bool:
    part = out / _PARTS / f"{speaker.id}.csv"
    if not part.is_file():
        return False
    expected = [clip_relpath(w, speaker.id, r) for w in words for r in range(reps)]
    try:
        with open(part, newline="", encoding="utf-8") as fh:
            paths = [row["path"] for row in csv.DictReader(fh)]
    except (OSError, KeyError, csv.Error):
        return False
    return paths == expected and all((out / p).is_file() for p in expected)


def _resolve(speakers: int | Sequence[str] | None,
             words: Sequence[str] | None, reps: int) -> tuple[tuple[Speaker, ...],
                                                              tuple[str, ...]]:
    if speakers is None or isinstance(speakers, int):
        try:
            spk = select_speakers(speakers)
        except ValueError as err:
            raise SynthError(str(err)) from None
    else:
        known = {s.id: s for s in SPEAKERS}
        unknown = [s for s in speakers if s not in known]
        if unknown or not speakers:
            raise SynthError(f"unknown speaker ids {unknown[:5]}; known: s00..s63"
                             if unknown else "the speaker list is empty")
        spk = tuple(known[s] for s in dict.fromkeys(speakers))
    try:
        wl = check_words(WORDS if words is None else words)
    except ValueError as err:
        raise SynthError(str(err)) from None
    if not isinstance(reps, int) or reps < 1:
        raise SynthError(f"reps must be a positive integer, got {reps!r}")
    return spk, wl


def _prepare_folder(out: Path, config: dict[str, Any], overwrite: bool, *,
                    what: str = "the synthetic corpus", files: Sequence[str] = ()) -> None:
    """Create ``out`` (or check it holds a corpus made with the same settings; with
    ``overwrite``, clear one made with others, and its extra ``files`` too). ``what``
    names the corpus in the errors (the word bank shares this folder logic)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SynthError(f"cannot write {what} to {out}: {err}") from None
    info = _read_json(out / INFO)
    if info is None:
        if any(not p.name.startswith(".") for p in out.iterdir()):
            raise SynthError(f"{out} is not empty and holds no synthetic corpus "
                             "(no synth.json): choose a new or empty folder")
        return
    if info.get("config") == config:
        return
    if not overwrite:
        old = info.get("config", {})
        diff = sorted(k for k in set(config) | set(old) if config.get(k) != old.get(k))
        raise SynthError(f"{out} holds a synthetic corpus made with other settings "
                         f"(different {', '.join(diff)}): choose another folder or overwrite "
                         "it (overwrite=True, --overwrite)")
    for name in (_CLIPS, _PARTS):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (MANIFEST, SPLITS, INFO, *files):
        (out / name).unlink(missing_ok=True)


def _mp_context() -> Any:
    """Fresh worker processes: forkserver where available (cheap, and the engine is never
    loaded by the server), else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context("spawn")


def _run_workers(out: Path, todo: Sequence[Speaker], words: Sequence[str], reps: int,
                 seed: int, workers: int, tick: Callable[[int], None]) -> dict[str, Any]:
    """Run one fresh process per speaker, ``workers`` at a time."""
    jobs = [(s.id, _worker_main, (str(out), s.id, list(words), reps, seed)) for s in todo]
    by_id = {s.id: s for s in todo}
    return run_jobs(jobs, workers, tick,
                    lambda sid: _speaker_done(out, by_id[sid], words, reps))


def run_jobs(jobs: Sequence[tuple[str, Callable[..., None], tuple[Any, ...]]], workers: int,
             tick: Callable[[int], None], done: Callable[[str], bool]) -> dict[str, Any]:
    """Run each job ``(speaker id, target, args)`` as ``target(connection, *args)`` in a
    fresh process, ``workers`` at a time. A target sends ``("progress", n)``, then
    ``("done", written, engine version, cpu seconds)`` or ``("error", text)``; ``done(id)``
    checks its output once it exits."""
    ctx = _mp_context()
    pending = deque(jobs)
    running: dict[str, tuple[Any, Any]] = {}  # id -> (process, connection)
    stats: dict[str, Any] = {"written": 0, "engine": "", "worker_cpu_s": 0.0}

    def drain(sid: str, conn: Any) -> None:
        while True:
            try:
                if not conn.poll():
                    return
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg[0] == "progress":
                tick(msg[1])
            elif msg[0] == "done":
                stats["written"] += msg[1]
                stats["engine"] = msg[2]
                stats["worker_cpu_s"] += msg[3]
            elif msg[0] == "error":
                raise SynthError(f"synthesis failed for speaker {sid}: {msg[1]}")

    try:
        while pending or running:
            while pending and len(running) < workers:
                sid, target, args = pending.popleft()
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=target, name=f"metavox-synth-{sid}",
                                   args=(send, *args), daemon=True)
                proc.start()
                send.close()
                running[sid] = (proc, recv)
            mp_wait([c for _, c in running.values()]
                    + [p.sentinel for p, _ in running.values()])
            for sid, (proc, conn) in list(running.items()):
                drain(sid, conn)
                if proc.is_alive():
                    continue
                proc.join()
                drain(sid, conn)
                conn.close()
                del running[sid]
                if not done(sid):
                    raise SynthError(f"the worker for speaker {sid} stopped (exit code "
                                     f"{proc.exitcode}) before finishing")
    finally:
        for proc, conn in running.values():
            if proc.is_alive():
                proc.terminate()
            proc.join()
            conn.close()
    return stats


def _progress_fn(progress: bool | Progress | None, total: int) -> tuple[Progress, Any]:
    if callable(progress):
        return progress, None
    if not progress:
        return (lambda done, tot: None), None
    from metavox.progress import Progress as Report

    bar = Report(total, "synthesising", "clip")

    def update(done: int, tot: int) -> None:
        bar.update(done - bar.n)

    return update, bar


def synthesize_corpus(
    out: str | os.PathLike[str] | None = None,
    *,
    speakers: int | Sequence[str] | None = None,
    words: Sequence[str] | None = None,
    reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool | Progress | None = False,
) -> SynthResult:
    """Generate (or finish) the synthetic corpus in ``out`` (default
    :func:`default_corpus_dir`).

    ``speakers``: how many of the built-in speakers (the first n; default all 64) or their
    ids; ``words``: the vocabulary (default the 248 built-in words); ``reps``: clips per
    (speaker, word); ``workers``: parallel processes (default: the usable CPUs);
    ``overwrite``: replace a corpus made with other settings; ``progress``: progress
    reports (True: :class:`metavox.progress.Progress`, a bar on a terminal and plain lines
    elsewhere) or a ``callback(done, total)``. Speakers already complete are kept, so a rerun
    resumes and more speakers can be added later.
    """
    from metavox.data.synth.engine import engine_available

    t0 = time.perf_counter()
    spk, wl = _resolve(speakers, words, reps)
    seed = int(seed)
    if not 0 <= seed < 2**63:
        raise SynthError(f"seed must be in [0, 2**63), got {seed}")
    out_p = Path(out if out is not None else default_corpus_dir()).expanduser()
    config = _config(wl, reps, seed)
    if not engine_available() and not all(_speaker_done(out_p, s, wl, reps) for s in spk):
        raise SynthError("generating the synthetic corpus needs eSpeak NG, an optional "
                         "extra: pip install 'metavox[synth]'")
    _prepare_folder(out_p, config, overwrite)
    todo = [s for s in spk if not _speaker_done(out_p, s, wl, reps)]
    if workers is None:
        try:
            workers = len(os.sched_getaffinity(0))
        except AttributeError:
            workers = os.cpu_count() or 1
    workers = max(1, min(int(workers), max(1, len(todo))))
    info: dict[str, Any] = {"name": CORPUS_NAME, "status": "incomplete", "config": config}
    old = _read_json(out_p / INFO) or {}
    atomic_write(out_p / INFO, json.dumps({**old, **info}, indent=1) + "\n")

    total = len(todo) * len(wl) * reps
    report, bar = _progress_fn(progress, total)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        report(done, total)

    try:
        stats = (_run_workers(out_p, todo, wl, reps, seed, workers, tick) if todo
                 else {"written": 0, "engine": "", "worker_cpu_s": 0.0})
    finally:
        if bar is not None:
            bar.close()

    rows: list[dict[str, str]] = []
    for s in spk:
        with open(out_p / _PARTS / f"{s.id}.csv", newline="", encoding="utf-8") as fh:
            rows.extend(csv.DictReader(fh))
    rows.sort(key=lambda r: r["path"])
    splits = {
        "words": {k: [w for w in wl if word_split(w) == k] for k in ("train", "val", "test")},
        "speakers": {k: [s.id for s in spk if s.split == k] for k in ("train", "val", "test")},
        "note": "meta-train on train words x train speakers, validate on val x val, test on "
                "test x test (manifest column 'split'); other clips have split 'none'",
    }
    atomic_write(out_p / SPLITS, json.dumps(splits, indent=1) + "\n")
    atomic_write(out_p / MANIFEST, _csv_text(rows))
    seconds = time.perf_counter() - t0
    info.update({
        "status": "complete", "speakers": [s.id for s in spk], "clips": len(rows),
        "engine": f"eSpeak NG {stats['engine']}" if stats["engine"] else old.get("engine", ""),
        "last_run": {"seconds": round(seconds, 1), "workers": workers,
                     "worker_cpu_s": round(stats["worker_cpu_s"], 1),
                     "clips_written": stats["written"], "speakers_run": len(todo)},
        "synthesiser": "eSpeak NG (GPL-3.0-or-later), from the espeakng-loader wheel",
    })
    atomic_write(out_p / INFO, json.dumps(info, indent=1) + "\n")
    return SynthResult(out_p, out_p / MANIFEST, len(rows), stats["written"], len(spk), len(wl),
                       seconds, workers, stats["engine"], stats["worker_cpu_s"])


def corpus_complete(
    out: str | os.PathLike[str],
    *,
    speakers: int | Sequence[str] | None = None,
    words: Sequence[str] | None = None,
    reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED,
) -> bool:
    """Whether ``out`` holds a finished corpus with these settings and all its clips."""
    out_p = Path(out).expanduser()
    spk, wl = _resolve(speakers, words, reps)
    info = _read_json(out_p / INFO)
    if (info is None or info.get("status") != "complete"
            or info.get("config") != _config(wl, reps, int(seed))
            or info.get("speakers") != [s.id for s in spk]
            or not (out_p / MANIFEST).is_file()):
        return False
    return all(_speaker_done(out_p, s, wl, reps) for s in spk)


def ensure_default_corpus(
    out: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    progress: bool | Progress | None = False,
) -> Path:
    """The folder of the default synthetic corpus, generated first if absent or incomplete
    (needs ``metavox[synth]`` only then). Read it with ``Corpus.from_manifest``."""
    out_p = Path(out if out is not None else default_corpus_dir()).expanduser()
    if not corpus_complete(out_p):
        synthesize_corpus(out_p, workers=workers, progress=progress)
    return out_p
