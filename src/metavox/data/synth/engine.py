"""A minimal ``ctypes`` binding to the eSpeak NG speech synthesiser (GPL-3.0-or-later).

This module is the only place in metavox that loads ``libespeak-ng``; the library and its
voice data come from the optional ``espeakng-loader`` wheel (``pip install metavox[synth]``).
Only the corpus generator's worker processes import it, so the library never enters the
process that trains models.

eSpeak NG keeps synthesis state in process-global variables (pitch-flutter phase, gain
control, noise generators) that carry over from one utterance to the next, and seeds its
random parts from the clock. Reproducible output therefore needs a fresh process, a fixed
seed per utterance and a fixed order of calls; :mod:`metavox.data.synth.generate` provides
all three.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import os

import numpy as np

__all__ = ["EngineError", "EspeakEngine", "engine_available", "get_engine"]

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PHONEMES = 0x100  # espeakPHONEMES: read [[...]] as phoneme mnemonics
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4

#: Valid ranges of the parameters metavox sets (speak_lib.h).
RATE_LIMITS = (80, 450)  # words per minute
PITCH_LIMITS = (0, 100)  # 50 = the voice's own pitch; 0 = half, 100 = about double
RANGE_LIMITS = (0, 100)  # 50 = the voice's own intonation range; 0 = monotone
VOLUME_LIMITS = (0, 200)  # 100 = normal

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EngineError(RuntimeError):
    """eSpeak NG is missing, failed to start, or rejected a voice or a text."""


def engine_available() -> bool:
    """Whether the ``espeakng-loader`` package is installed (checked without loading it)."""
    return importlib.util.find_spec("espeakng_loader") is not None


class EspeakEngine:
    """eSpeak NG in synchronous mode: text in, 16-bit mono samples out.

    There is one engine per process (the C library is a process-wide singleton); use
    :func:`get_engine`.
    """

    def __init__(self) -> None:
        if not engine_available():
            raise EngineError(
                "the built-in synthetic corpus needs eSpeak NG: pip install 'metavox[synth]'"
            )
        import espeakng_loader

        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as err:
            raise EngineError(f"cannot load eSpeak NG from espeakng-loader: {err}") from err
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p

        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(data_path), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise EngineError(f"espeak_Initialize failed (data folder {data_path})")
        lib.espeak_SetSynthCallback(self._callback)
        self.sample_rate: int = int(rate)
        self.version: str = (lib.espeak_Info(None) or b"?").decode()
        self._voice: str | None = None
        self._libc_srand = None
        with contextlib.suppress(OSError, AttributeError, TypeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            libc.srand.argtypes = [ctypes.c_uint]
            self._libc_srand = libc.srand

    def _collect(self, wav: ctypes._Pointer, n: int, _events: int) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def set_voice(self, name: str) -> None:
        """Select a voice by name, e.g. ``"en-us"`` or ``"en-gb-scotland+f2"`` (accent+variant)."""
        if self._lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise EngineError(f"eSpeak NG has no voice {name!r}")
        self._voice = name

    def synthesize(
        self,
        text: str,
        *,
        rate: int,
        pitch: int,
        pitch_range: int,
        seed: int,
        volume: int = 100,
        phoneme_input: bool = False,
    ) -> np.ndarray:
        """Speak ``text`` with the current voice; returns int16 samples at ``sample_rate``.

        ``rate`` is in words per minute, ``pitch`` and ``pitch_range`` on eSpeak's 0-100
        scale, ``volume`` 0-200 (100 = normal; lower leaves headroom so that loud voices do
        not hit the engine's limiter); ``seed`` seeds the engine's random parts;
        ``phoneme_input``: text inside ``[[ ]]`` is read as eSpeak phoneme mnemonics
        (otherwise it is read as text, brackets and all).
        """
        if self._voice is None:
            raise EngineError("set_voice() must be called before synthesize()")
        for param, value, (lo, hi) in (
            (_PARAM_RATE, rate, RATE_LIMITS),
            (_PARAM_PITCH, pitch, PITCH_LIMITS),
            (_PARAM_RANGE, pitch_range, RANGE_LIMITS),
            (_PARAM_VOLUME, volume, VOLUME_LIMITS),
        ):
            if not lo <= value <= hi:
                raise EngineError(f"parameter {param} value {value} outside [{lo}, {hi}]")
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
        if self._libc_srand is not None:  # some builds draw breath noise from libc rand()
            self._libc_srand(int(seed) & 0xFFFFFFFF)
        data = text.encode("utf-8")
        self._chunks = []
        flags = _CHARS_UTF8 | (_PHONEMES if phoneme_input else 0)
        err = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, flags,
                                     None, None)
        if err != 0:
            raise EngineError(f"espeak_Synth failed ({err}) for {text!r}")
        chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks).astype(np.int16, copy=False)

    def phonemes(self, text: str, separator: str = "") -> str:
        """eSpeak's phoneme transcription of ``text`` with the current voice (ASCII names),
        with ``separator`` (one character) between phonemes if given."""
        if self._voice is None:
            raise EngineError("set_voice() must be called before phonemes()")
        if len(separator) > 1:
            raise EngineError(f"the phoneme separator must be one character, not {separator!r}")
        mode = ord(separator) << 8 if separator else 0
        buf = ctypes.c_char_p(text.encode("utf-8"))
        parts: list[str] = []
        while buf.value:
            out = self._lib.espeak_TextToPhonemes(ctypes.byref(buf), _CHARS_UTF8, mode)
            parts.append((out or b"").decode("utf-8", "replace").strip())
        return " ".join(p for p in parts if p)


_ENGINE: EspeakEngine | None = None


def get_engine() -> EspeakEngine:
    """This process's engine, started on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = EspeakEngine()
    return _ENGINE
