"""Reading, resampling, trimming and writing audio clips.

Everything goes through ``soundfile`` (libsndfile): WAV, FLAC, Ogg/Vorbis, MP3 (where the
installed libsndfile has it) and the other formats it knows. Every failure to get usable
samples out of a file is raised as :class:`AudioError`, whose message starts with the file,
so that a corpus scan can report exactly which clip is bad and why.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from metavox.storage import atomic_path

__all__ = [
    "AudioError",
    "AudioInfo",
    "audio_info",
    "load_audio",
    "resample",
    "trim_silence",
    "fix_length",
    "load_clip",
    "save_audio",
]

PathLike = str | os.PathLike[str]


class AudioError(ValueError):
    """A file that cannot give usable audio; the message names the file and the problem.

    ``AudioError(path, problem)`` gives ``"<path>: <problem>"`` and sets ``.path`` and
    ``.problem``; ``AudioError(message)`` is a plain message with ``.path = None``.
    Survives pickling (worker processes) with its attributes.
    """

    def __init__(self, path: PathLike | str | None, problem: str | None = None) -> None:
        if problem is None:  # one-argument form: a ready message
            self.path: str | None = None
            self.problem = "" if path is None else str(path)
            super().__init__(self.problem)
            return
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        if self.path is None:
            return (type(self), (self.problem,))
        return (type(self), (self.path, self.problem))


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says: rate, length and layout, without decoding the samples."""

    path: str
    sample_rate: int
    frames: int
    channels: int
    duration: float  # seconds
    format: str  # libsndfile major format, e.g. "WAV", "FLAC", "OGG", "MP3"
    subtype: str = ""  # e.g. "PCM_16", "FLOAT", "VORBIS"


def _check_file(path: PathLike) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise AudioError(p, "no such file")
    if not os.path.isfile(p):
        raise AudioError(p, "not a regular file")
    if os.path.getsize(p) == 0:
        raise AudioError(p, "empty file (0 bytes)")
    return p


def _check_riff(path: str) -> None:
    """Raise if a RIFF/WAVE header claims more sample data than the file holds.

    libsndfile silently shortens such files; a truncated download or copy should fail
    loudly instead of turning into a shorter clip.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return
        fmt = "<4sI" if head[:4] == b"RIFF" else ">4sI"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, csize = struct.unpack(fmt, f.read(8))
            available = size - (pos + 8)
            if cid == b"data":
                if csize not in (0, 0xFFFFFFFF) and csize > available:
                    raise AudioError(
                        path,
                        f"truncated file (header declares {csize} data bytes, "
                        f"only {available} present)",
                    )
                return
            if csize > available:
                raise AudioError(path, f"truncated file (chunk {cid!r} runs past the end)")
            pos += 8 + csize + (csize & 1)


def _open_error(path: str, exc: Exception) -> AudioError:
    reason = str(exc).strip() or type(exc).__name__
    if reason.startswith("Error opening") and "': " in reason:
        reason = reason.split("': ", 1)[1]  # soundfile repeats the path; keep its reason
    return AudioError(path, f"not a readable audio file ({reason})")


def audio_info(path: PathLike) -> AudioInfo:
    """Header facts about an audio file; raises :class:`AudioError` if it is not usable audio."""
    p = _check_file(path)
    try:
        # bytes: a name that is not valid UTF-8 (kept by Python as surrogates) still opens
        info = sf.info(os.fsencode(p))
    except (RuntimeError, OSError, TypeError) as exc:
        raise _open_error(p, exc) from exc
    _check_riff(p)
    if info.frames <= 0:
        raise AudioError(p, "no audio frames (zero-length audio)")
    if info.samplerate <= 0 or info.channels <= 0:
        raise AudioError(p, f"invalid header (rate {info.samplerate}, {info.channels} channels)")
    return AudioInfo(
        path=p,
        sample_rate=int(info.samplerate),
        frames=int(info.frames),
        channels=int(info.channels),
        duration=info.frames / info.samplerate,
        format=str(info.format),
        subtype=str(info.subtype),
    )


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling along the last axis (``scipy.signal.resample_poly``).

    The up/down factors are reduced by their gcd, so 8 kHz -> 16 kHz is up=2, down=1. The
    output has ``ceil(n * target_sr / orig_sr)`` samples and the input's float dtype
    (float32 for integer input).
    """
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    wave = np.asarray(wave)
    dtype = wave.dtype if np.issubdtype(wave.dtype, np.floating) else np.dtype(np.float32)
    if orig_sr == target_sr:
        return wave.astype(dtype, copy=True)
    g = math.gcd(orig_sr, target_sr)
    out = resample_poly(wave, target_sr // g, orig_sr // g, axis=-1)
    return np.ascontiguousarray(out, dtype=dtype)


def load_audio(path: PathLike, sample_rate: int | None = 16000, *, mono: bool = True) -> np.ndarray:
    """Decode a file to float32 in [-1, 1] at ``sample_rate`` (``None`` keeps the file's rate).

    Returns shape ``[samples]`` when ``mono`` (channels averaged), else ``[channels, samples]``.
    Raises :class:`AudioError` for a missing, empty, zero-length, truncated or corrupt file, a
    non-audio file with an audio extension, and NaN/inf samples.
    """
    info = audio_info(path)
    p = info.path
    try:
        data, sr = sf.read(os.fsencode(p), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, TypeError) as exc:
        raise AudioError(p, f"corrupt or truncated audio ({str(exc).strip()})") from exc
    if data.shape[0] == 0:
        raise AudioError(p, "no audio frames (zero-length audio)")
    if data.shape[0] < info.frames:
        raise AudioError(p, f"truncated file (decoded {data.shape[0]} of {info.frames} frames)")
    if not np.isfinite(data).all():
        raise AudioError(p, "contains NaN or infinite samples")
    wave = data.T  # [channels, samples]
    if mono:
        wave = wave.mean(axis=0)
    if sample_rate is not None and int(sample_rate) != sr:
        wave = resample(wave, sr, int(sample_rate))
    return np.ascontiguousarray(np.clip(wave, -1.0, 1.0), dtype=np.float32)


def frame_rms(wave: np.ndarray, sample_rate: int, *, frame_ms: float = 25.0,
              overlap: int = 1) -> tuple[np.ndarray, int, int]:
    """``(rms [frames], frame, hop)``: the RMS of ``frame_ms`` frames every ``frame /
    overlap`` samples over the last axis (channels averaged), the last frame zero-padded to
    reach the end; the energy measure of :func:`speech_bounds` and of the stream
    segmenter (:mod:`metavox.kws.segments`)."""
    wave = np.asarray(wave)
    n = wave.shape[-1]
    frame = max(1, int(round(sample_rate * frame_ms / 1000.0)))
    hop = max(1, frame // overlap)
    mono = wave if wave.ndim == 1 else wave.reshape(-1, n).mean(axis=0)
    n_frames = 1 + -(-max(n - frame, 0) // hop)  # ceil: the last frame reaches the end
    padded = np.pad(mono.astype(np.float64), (0, frame + (n_frames - 1) * hop - n))
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop]
    return np.sqrt(np.mean(frames**2, axis=-1)), frame, hop


def speech_bounds(
    wave: np.ndarray,
    sample_rate: int,
    *,
    top_db: float = 40.0,
    frame_ms: float = 25.0,
    floor_db: float = -100.0,
) -> tuple[int, int]:
    """``(start, end)`` samples of the speech in ``wave``, judged by frame RMS energy.

    A frame (``frame_ms`` long, hop a quarter of that) is speech when its RMS is within
    ``top_db`` of the loudest frame and above ``floor_db`` dBFS; the bounds run from the
    first to the last speech frame. All silence (no frame above ``floor_db``) gives the
    whole clip. Works on the last axis (channels averaged).
    """
    wave = np.asarray(wave)
    n = wave.shape[-1]
    if n == 0:
        return 0, 0
    rms, frame, hop = frame_rms(wave, sample_rate, frame_ms=frame_ms, overlap=4)
    peak = rms.max()
    floor = 10.0 ** (floor_db / 20.0)
    if peak <= floor:
        return 0, n
    loud = np.flatnonzero((rms >= peak * 10.0 ** (-top_db / 20.0)) & (rms > floor))
    return int(loud[0]) * hop, min(n, int(loud[-1]) * hop + frame)


def trim_silence(
    wave: np.ndarray,
    sample_rate: int,
    *,
    top_db: float = 40.0,
    frame_ms: float = 25.0,
    floor_db: float = -100.0,
) -> np.ndarray:
    """Cut leading and trailing silence (see :func:`speech_bounds`); never empty for
    non-silent input, unchanged for all silence. Works on the last axis."""
    start, end = speech_bounds(wave, sample_rate, top_db=top_db, frame_ms=frame_ms,
                               floor_db=floor_db)
    return np.asarray(wave)[..., start:end]


def fix_length(
    wave: np.ndarray,
    length: int,
    *,
    mode: str = "center",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Crop or zero-pad the last axis to exactly ``length`` samples.

    ``mode="center"`` keeps the middle / pads equally on both sides; ``"random"`` picks the
    crop offset or the padding split uniformly with ``rng`` (required, for reproducibility);
    ``"start"`` keeps the beginning / pads at the end.
    """
    wave = np.asarray(wave)
    length = int(length)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if mode not in ("center", "random", "start"):
        raise ValueError(f"mode must be 'center', 'random' or 'start', got {mode!r}")
    if mode == "random" and rng is None:
        raise ValueError("mode='random' needs an explicit rng (np.random.Generator)")
    n = wave.shape[-1]
    if n == length:
        return wave.copy()
    slack = abs(n - length)
    if mode == "center":
        offset = slack // 2
    elif mode == "start":
        offset = 0
    else:
        offset = int(rng.integers(0, slack + 1))
    if n > length:
        return wave[..., offset : offset + length].copy()
    pad = [(0, 0)] * (wave.ndim - 1) + [(offset, slack - offset)]
    return np.pad(wave, pad)


def load_clip(
    path: PathLike,
    sample_rate: int = 16000,
    duration: float = 1.0,
    *,
    trim: bool = False,
    crop: str = "center",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Load a mono clip of exactly ``round(duration * sample_rate)`` samples.

    load -> :func:`fit_clip` (optional :func:`trim_silence`, :func:`fix_length`).
    """
    return fit_clip(load_audio(path, sample_rate), sample_rate, duration, trim=trim,
                    crop=crop, rng=rng)


def fit_clip(
    wave: np.ndarray,
    sample_rate: int,
    duration: float = 1.0,
    *,
    trim: bool = False,
    crop: str = "center",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A decoded clip made into exactly ``round(duration * sample_rate)`` samples: (optional)
    :func:`trim_silence`, then :func:`fix_length` with ``mode=crop``."""
    if trim:
        wave = trim_silence(wave, sample_rate)
    return fix_length(wave, int(round(duration * sample_rate)), mode=crop, rng=rng)


def save_audio(
    path: PathLike, wave: np.ndarray, sample_rate: int, *, subtype: str | None = None
) -> None:
    """Write ``[samples]`` or ``[channels, samples]`` audio; format from the extension.

    Written atomically (:func:`metavox.storage.atomic_path`), so readers never see a
    half-written file. ``subtype`` as in ``soundfile`` (default:
    libsndfile's default for the format, e.g. PCM_16 for WAV).
    """
    p = Path(path)
    wave = np.asarray(wave)
    if wave.ndim not in (1, 2):
        raise ValueError(f"wave must be [samples] or [channels, samples], got {wave.shape}")
    if not np.issubdtype(wave.dtype, np.floating) and not np.issubdtype(wave.dtype, np.integer):
        raise ValueError(f"wave must be numeric, got dtype {wave.dtype}")
    if np.issubdtype(wave.dtype, np.floating) and not np.isfinite(wave).all():
        raise ValueError(f"{p}: refusing to write NaN or infinite samples")
    data = wave if wave.ndim == 1 else wave.T
    with atomic_path(p) as tmp:
        sf.write(tmp, data, int(sample_rate), subtype=subtype,
                 format=p.suffix.lstrip(".").upper() or None)
