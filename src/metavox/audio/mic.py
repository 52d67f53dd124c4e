"""Live audio from a microphone, as chunks for a :class:`~metavox.kws.spotter.Spotter`.

Optional: the ``mic`` extra installs `sounddevice <https://python-sounddevice.readthedocs.io>`_,
which records through the PortAudio library (on Debian: ``apt-get install libportaudio2``).
The device is opened at the model's sample rate, mono, float32; the operating system's
sound server resamples when the hardware runs at another rate. Every failure (no extra,
no PortAudio, no input device, a rate the device refuses, a device that goes silent) is a
:class:`MicrophoneError` that says what to do.
"""

from __future__ import annotations

import queue
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

#: seconds without any audio from an open device before giving up
STALL_SECONDS = 5.0


class MicrophoneError(RuntimeError):
    """The microphone cannot be used; the message says why and what to do."""


def sounddevice_module() -> Any:
    """The ``sounddevice`` module, or a :class:`MicrophoneError` naming what is missing."""
    try:
        import sounddevice
    except ImportError:
        raise MicrophoneError("listening to a microphone needs the mic extra: "
                              "pip install 'metavox[mic]' (sounddevice)") from None
    except OSError as err:  # sounddevice is there, the PortAudio library is not
        raise MicrophoneError(f"sounddevice cannot load PortAudio ({err}); install it, "
                              "e.g. apt-get install libportaudio2") from None
    return sounddevice


def microphone_chunks(sample_rate: int, *, chunk_seconds: float = 0.064,
                      device: int | str | None = None, seconds: float | None = None,
                      backend: Any = None) -> Iterator[np.ndarray]:
    """Mono float32 chunks of ``chunk_seconds`` from the microphone ``device`` (default:
    the system's) at ``sample_rate``, for ``seconds`` (``None``: until the caller stops).
    ``backend``: the sounddevice module or a stand-in with its ``InputStream`` (tests)."""
    if sample_rate <= 0 or chunk_seconds <= 0 or (seconds is not None and seconds <= 0):
        raise ValueError("sample_rate, chunk_seconds and seconds must be > 0")
    sd = backend if backend is not None else sounddevice_module()
    blocks: queue.Queue[np.ndarray] = queue.Queue()
    problems: list[str] = []

    def callback(indata, frames, time, status) -> None:  # PortAudio's thread
        if status:
            problems.append(str(status))
        blocks.put(np.asarray(indata, dtype=np.float32).reshape(frames, -1)[:, 0].copy())

    name = "the default microphone" if device is None else f"microphone {device!r}"
    try:
        stream = sd.InputStream(samplerate=sample_rate, channels=1, dtype="float32",
                                blocksize=max(1, round(chunk_seconds * sample_rate)),
                                device=device, callback=callback)
    except Exception as err:  # PortAudioError, ValueError: no device, unsupported rate
        raise MicrophoneError(f"cannot open {name} at {sample_rate} Hz mono: {err} "
                              "(is there an input device? choose one with --device)") from None
    left = None if seconds is None else round(seconds * sample_rate)
    with stream:
        while left is None or left > 0:
            try:
                chunk = blocks.get(timeout=STALL_SECONDS)
            except queue.Empty:
                raise MicrophoneError(f"{name} sent no audio for {STALL_SECONDS:g} s") from None
            if left is not None:
                chunk = chunk[:left]
                left -= len(chunk)
            yield chunk
    if problems:
        warnings.warn(f"{name}: {len(problems)} problem(s) while recording, e.g. "
                      f"{problems[0]} (audio was lost; a busy machine?)", stacklevel=2)
