"""Audio front-end: loading, resampling, fixed-length clips, log-mel/MFCC, augmentation.

This layer imports nothing else from metavox but :mod:`metavox.storage` (atomic writes);
corpora, caches and models build on it.
"""

from metavox.audio.augment import spec_augment
from metavox.audio.features import MFCC, FrontendConfig, LogMel, build_frontend, mel_filterbank
from metavox.audio.io import (
    AudioError,
    AudioInfo,
    audio_info,
    fix_length,
    load_audio,
    load_clip,
    resample,
    save_audio,
    trim_silence,
)

__all__ = [
    "MFCC", "AudioError", "AudioInfo", "FrontendConfig", "LogMel", "audio_info",
    "build_frontend", "fix_length", "load_audio", "load_clip", "mel_filterbank", "resample",
    "save_audio", "spec_augment", "trim_silence",
]
