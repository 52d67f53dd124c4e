"""Audio front-end: loading, resampling, fixed-length clips, log-mel/MFCC, augmentation.

This layer imports nothing else from metavox; corpora, caches and models build on it.
"""

from metavox.audio.augment import (
    AugmentConfig,
    NoiseBank,
    WaveAugment,
    add_noise,
    random_gain,
    spec_augment,
    time_shift,
)
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
    "AudioError",
    "AudioInfo",
    "audio_info",
    "load_audio",
    "resample",
    "trim_silence",
    "fix_length",
    "load_clip",
    "save_audio",
    "FrontendConfig",
    "mel_filterbank",
    "LogMel",
    "MFCC",
    "build_frontend",
    "spec_augment",
    "add_noise",
    "time_shift",
    "random_gain",
    "NoiseBank",
    "AugmentConfig",
    "WaveAugment",
]
