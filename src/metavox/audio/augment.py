"""Data augmentation for meta-training: SpecAugment masks, noise at an SNR, shift, gain.

Every function takes an explicit random generator (``numpy.random.Generator``, or a
``torch.Generator`` for :func:`spec_augment`), so an episode's augmentation is fixed by its
seed. Nothing here runs by itself: the training code applies it to meta-training episodes
only and leaves evaluation data untouched. :class:`AugmentConfig` is all off by default.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metavox.audio.io import AudioError, load_audio

__all__ = [
    "spec_augment",
    "add_noise",
    "time_shift",
    "random_gain",
    "NoiseBank",
    "AugmentConfig",
    "WaveAugment",
]

Generator = torch.Generator | np.random.Generator


def _randint(gen: Generator, high: torch.Tensor) -> torch.Tensor:
    """Uniform integers in ``[0, high]`` (inclusive), elementwise, as int64 on the CPU."""
    if isinstance(gen, np.random.Generator):
        u = torch.from_numpy(gen.random(tuple(high.shape)))
    else:
        u = torch.rand(high.shape, generator=gen, dtype=torch.float64)
    return torch.minimum((u * (high + 1)).long(), high)


def _band_mask(gen: Generator, lead: int, n_masks: int, width: int, size: int) -> torch.Tensor:
    """``[lead, size]`` bool: ``n_masks`` bands of width ``U[0, width]`` at uniform starts."""
    if n_masks <= 0 or width <= 0 or size <= 0:
        return torch.zeros(lead, size, dtype=torch.bool)
    w = _randint(gen, torch.full((lead, n_masks), min(width, size)))
    start = _randint(gen, size - w)
    idx = torch.arange(size)
    inside = (idx >= start[..., None]) & (idx < (start + w)[..., None])  # [lead, n, size]
    return inside.any(dim=1)


def spec_augment(
    feats: torch.Tensor,
    *,
    freq_masks: int = 2,
    freq_width: int = 8,
    time_masks: int = 2,
    time_width: int = 10,
    generator: Generator,
    mask_value: float | str = "mean",
) -> torch.Tensor:
    """SpecAugment frequency and time masking on ``[..., F, T]`` features (a new tensor).

    Each item of the leading dims gets its own masks: ``freq_masks`` bands of
    ``U{0..freq_width}`` bins and ``time_masks`` bands of ``U{0..time_width}`` frames, each at
    a uniform position. Masked cells are set to ``mask_value``; ``"mean"`` (default) uses each
    item's own mean, which is neutral for raw log-mel (where 0 would be loud) and equals 0
    for normalised features. Random numbers come from ``generator`` on the CPU, so results do
    not depend on the device.
    """
    if feats.dim() < 2:
        raise ValueError(f"features must be [..., F, T], got shape {tuple(feats.shape)}")
    F, T = feats.shape[-2:]
    x = feats.reshape(-1, F, T)
    lead = x.shape[0]
    fmask = _band_mask(generator, lead, freq_masks, freq_width, F)  # [lead, F]
    tmask = _band_mask(generator, lead, time_masks, time_width, T)  # [lead, T]
    mask = (fmask[:, :, None] | tmask[:, None, :]).to(feats.device)
    if mask_value == "mean":
        fill = x.mean(dim=(-2, -1), keepdim=True)
    elif isinstance(mask_value, str):
        raise ValueError(f"mask_value must be a number or 'mean', got {mask_value!r}")
    else:
        fill = torch.full((), float(mask_value), dtype=feats.dtype, device=feats.device)
    return torch.where(mask, fill, x).reshape(feats.shape)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def _fit_noise(noise: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """Tile ``noise`` to cover ``length`` and cut a segment (random start when ``rng``)."""
    noise = np.asarray(noise).reshape(-1)
    if noise.size == 0:
        raise ValueError("noise clip is empty")
    reps = -(-(length + noise.size) // noise.size)  # enough to start anywhere in the clip
    offset = 0 if rng is None else int(rng.integers(0, noise.size))
    return np.tile(noise, reps)[offset : offset + length]


def add_noise(
    wave: np.ndarray,
    noise: np.ndarray,
    snr_db: float,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Mix ``noise`` into ``wave`` so that signal power / noise power = ``snr_db`` dB.

    The noise is tiled (if shorter) and cut to the wave's length, starting at a random
    offset drawn from ``rng`` (at 0 without one). Silent input or silent noise gives an
    unchanged copy. The result is not clipped, so the SNR is exact.
    """
    wave = np.asarray(wave)
    seg = _fit_noise(noise, wave.shape[-1], rng)
    p_sig, p_noise = _power(wave), _power(seg)
    if p_sig == 0.0 or p_noise == 0.0:
        return wave.copy()
    scale = np.sqrt(p_sig / (p_noise * 10.0 ** (snr_db / 10.0)))
    out = wave + scale * seg
    return out.astype(wave.dtype if np.issubdtype(wave.dtype, np.floating) else np.float32)


def time_shift(
    wave: np.ndarray, max_shift: int, rng: np.random.Generator, *, wrap: bool = False
) -> np.ndarray:
    """Shift by ``U{-max_shift..max_shift}`` samples along the last axis.

    Vacated samples are zeros (``wrap=False``, default: speech does not wrap around) or the
    samples that fell off the other end (``wrap=True``).
    """
    wave = np.asarray(wave)
    max_shift = min(int(max_shift), wave.shape[-1])
    if max_shift <= 0:
        return wave.copy()
    shift = int(rng.integers(-max_shift, max_shift + 1))
    if wrap:
        return np.roll(wave, shift, axis=-1)
    out = np.zeros_like(wave)
    if shift >= 0:
        out[..., shift:] = wave[..., : wave.shape[-1] - shift]
    else:
        out[..., :shift] = wave[..., -shift:]
    return out


def random_gain(
    wave: np.ndarray,
    max_db: float,
    rng: np.random.Generator,
    *,
    min_db: float | None = None,
) -> np.ndarray:
    """Scale by a gain drawn uniformly in ``[min_db, max_db]`` dB (``min_db`` = -``max_db``)."""
    wave = np.asarray(wave)
    lo = -float(max_db) if min_db is None else float(min_db)
    if lo > max_db:
        raise ValueError(f"min_db {lo} > max_db {max_db}")
    gain = 10.0 ** (rng.uniform(lo, max_db) / 20.0)
    dtype = wave.dtype if np.issubdtype(wave.dtype, np.floating) else np.float32
    return (wave * gain).astype(dtype)


_AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


class NoiseBank:
    """Background-noise clips held in memory, e.g. Speech Commands' ``_silence_`` folder.

    ``NoiseBank(folder)`` loads every audio file directly in ``folder`` (sorted by name, so
    the bank is the same on every machine), resampled to ``sample_rate``; ``max_clips`` keeps
    the first that many. A bad file raises :class:`~metavox.audio.io.AudioError` unless
    ``skip_bad=True``.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        sample_rate: int = 16000,
        *,
        max_clips: int | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"noise folder not found: {self.folder}")
        self.sample_rate = int(sample_rate)
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in _AUDIO_EXTS)
        self.clips: list[np.ndarray] = []
        self.files: list[Path] = []
        for f in files:
            if max_clips is not None and len(self.clips) >= max_clips:
                break
            try:
                self.clips.append(load_audio(f, self.sample_rate))
            except AudioError:
                if not skip_bad:
                    raise
                continue
            self.files.append(f)
        if not self.clips:
            raise ValueError(f"no usable audio clips in {self.folder}")

    @classmethod
    def from_arrays(cls, clips: list[np.ndarray], sample_rate: int = 16000) -> NoiseBank:
        """A bank from clips already in memory (mono, at ``sample_rate``)."""
        if not clips:
            raise ValueError("need at least one noise clip")
        bank = cls.__new__(cls)
        bank.folder = None  # type: ignore[assignment]
        bank.sample_rate = int(sample_rate)
        bank.clips = [np.asarray(c, dtype=np.float32).reshape(-1) for c in clips]
        bank.files = []
        return bank

    def __len__(self) -> int:
        return len(self.clips)

    def sample(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """A random clip, tiled if short, cut to ``length`` at a random offset."""
        clip = self.clips[int(rng.integers(0, len(self.clips)))]
        return _fit_noise(clip, int(length), rng)


@dataclass(frozen=True)
class AugmentConfig:
    """What augmentation to apply during meta-training. Everything is off by default."""

    noise_prob: float = 0.0  # chance to add background noise to a clip
    snr_db: tuple[float, float] = (5.0, 20.0)  # SNR drawn uniformly in this range
    noise_dir: str | None = None  # folder of noise clips for NoiseBank
    shift_ms: float = 0.0  # max random time shift, either way
    gain_db: float = 0.0  # max random gain, either way
    freq_masks: int = 0  # SpecAugment on features
    freq_width: int = 8
    time_masks: int = 0
    time_width: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "snr_db", tuple(float(v) for v in self.snr_db))
        if len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db must be (low, high) with low <= high, got {self.snr_db}")
        if not 0.0 <= self.noise_prob <= 1.0:
            raise ValueError(f"noise_prob must be in [0, 1], got {self.noise_prob}")
        negative = [
            f.name
            for f in fields(self)
            if f.name not in ("snr_db", "noise_dir") and getattr(self, f.name) < 0
        ]
        if negative:
            raise ValueError(f"must be >= 0: {negative}")

    @property
    def wave_enabled(self) -> bool:
        """Whether any waveform augmentation is on."""
        return self.noise_prob > 0 or self.shift_ms > 0 or self.gain_db > 0

    @property
    def spec_enabled(self) -> bool:
        """Whether SpecAugment is on."""
        return (self.freq_masks > 0 and self.freq_width > 0) or (
            self.time_masks > 0 and self.time_width > 0
        )

    @property
    def enabled(self) -> bool:
        return self.wave_enabled or self.spec_enabled

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``snr_db`` as a list)."""
        d = asdict(self)
        d["snr_db"] = list(self.snr_db)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown AugmentConfig keys: {unknown}")
        return cls(**d)


class WaveAugment:
    """Applies an :class:`AugmentConfig` with a numpy Generator: shift, gain, then noise.

    ``aug(wave, rng)`` augments a ``[samples]`` clip or each row of ``[B, samples]``;
    ``aug.spec(feats, rng)`` applies the SpecAugment part to ``[..., F, T]`` features. With
    the default config both return their input unchanged (as a copy for waves).
    """

    def __init__(
        self,
        config: AugmentConfig | None = None,
        *,
        sample_rate: int = 16000,
        noise_bank: NoiseBank | None = None,
    ) -> None:
        self.config = AugmentConfig() if config is None else config
        self.sample_rate = int(sample_rate)
        self.noise_bank = noise_bank
        if self.config.noise_prob > 0 and self.noise_bank is None:
            if self.config.noise_dir is None:
                raise ValueError("noise_prob > 0 needs a noise_bank or config.noise_dir")
            self.noise_bank = NoiseBank(self.config.noise_dir, self.sample_rate)

    def _one(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        if cfg.shift_ms > 0:
            wave = time_shift(wave, int(round(cfg.shift_ms * self.sample_rate / 1000)), rng)
        if cfg.gain_db > 0:
            wave = random_gain(wave, cfg.gain_db, rng)
        if cfg.noise_prob > 0 and rng.random() < cfg.noise_prob:
            assert self.noise_bank is not None
            noise = self.noise_bank.sample(wave.shape[-1], rng)
            wave = add_noise(wave, noise, float(rng.uniform(*cfg.snr_db)))
        return wave

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augmented copy of ``[samples]`` or ``[B, samples]`` audio."""
        wave = np.asarray(wave)
        if wave.ndim == 1:
            return self._one(wave, rng).copy()
        if wave.ndim != 2:
            raise ValueError(f"wave must be [samples] or [B, samples], got {wave.shape}")
        return np.stack([self._one(row, rng) for row in wave])

    def spec(self, feats: torch.Tensor, rng: Generator) -> torch.Tensor:
        """SpecAugment per the config (unchanged input when it is off)."""
        cfg = self.config
        if not cfg.spec_enabled:
            return feats
        return spec_augment(
            feats,
            freq_masks=cfg.freq_masks,
            freq_width=cfg.freq_width,
            time_masks=cfg.time_masks,
            time_width=cfg.time_width,
            generator=rng,
        )
