"""Data augmentation for meta-training: SpecAugment masks on cached features.

:func:`spec_augment` takes an explicit ``torch.Generator``, so an episode's augmentation is
fixed by its seed. Nothing here runs by itself: a run's ``[augment]`` settings apply it to
meta-training episodes only and leave evaluation data untouched. It works on the cached
features, so training never decodes audio again.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["spec_augment"]

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


#: the kinds of background :func:`background_noise` makes
NOISES = ("white", "pink", "brown", "hum", "silence")


def background_noise(kind: str, samples: int, rate: int, rng: np.random.Generator,
                     level: float = 0.05) -> np.ndarray:
    """``samples`` of a background of ``kind`` at RMS ``level`` (float32 in [-1, 1]):
    white, pink (1/f) and brown (1/f^2) noise, mains hum with harmonics, or near-silence
    (a faint hiss). Negatives for open-set calibration and backgrounds for test streams."""
    if kind not in NOISES:
        raise ValueError(f"noise kind must be one of {NOISES}, got {kind!r}")
    if kind == "hum":
        t = np.arange(samples) / rate
        f0 = rng.choice([50.0, 60.0])
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi)) / k
                for k in range(1, 6)) + 0.1 * rng.standard_normal(samples)
    else:
        white = rng.standard_normal(samples)
        if kind in ("white", "silence"):
            x = white
        else:
            spectrum = np.fft.rfft(white)
            f = np.maximum(np.fft.rfftfreq(samples, 1.0 / rate), 1.0)
            spectrum /= np.sqrt(f) if kind == "pink" else f
            x = np.fft.irfft(spectrum, n=samples)
        if kind == "silence":
            level = level * 0.02
    x = x / max(float(np.sqrt(np.mean(np.square(x)))), 1e-12) * level
    return np.clip(x, -1.0, 1.0).astype(np.float32)
