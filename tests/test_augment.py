"""Augmentation: exact SNR, masks, shift, gain, determinism under a seed, config round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metavox.audio.augment import (
    AugmentConfig,
    NoiseBank,
    WaveAugment,
    add_noise,
    random_gain,
    spec_augment,
    time_shift,
)
from metavox.audio.io import AudioError, save_audio

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SILENCE = DATA / "speech_commands_v2_test" / "_silence_"


def _tone(n: int = 16000, freq: float = 440.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(n) / 16000)).astype(np.float32)


def _snr(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
def test_add_noise_hits_requested_snr(snr_db: float) -> None:
    rng = np.random.default_rng(0)
    clean = _tone()
    noise = rng.standard_normal(3000).astype(np.float32)  # shorter: gets tiled
    mixed = add_noise(clean, noise, snr_db, np.random.default_rng(1))
    assert mixed.shape == clean.shape and mixed.dtype == np.float32
    assert abs(_snr(clean, mixed) - snr_db) < 0.1
    long_noise = rng.standard_normal(50000)  # longer: gets cropped
    assert abs(_snr(clean, add_noise(clean, long_noise, snr_db)) - snr_db) < 0.1


def test_add_noise_edge_cases() -> None:
    clean = _tone(1000)
    assert np.array_equal(add_noise(clean, np.zeros(10), 10.0), clean)  # silent noise
    silent = np.zeros(1000, np.float32)
    assert np.array_equal(add_noise(silent, np.ones(10), 10.0), silent)
    with pytest.raises(ValueError):
        add_noise(clean, np.zeros(0), 10.0)
    noise = np.random.default_rng(0).standard_normal(500)
    a = add_noise(clean, noise, 5.0, np.random.default_rng(7))
    b = add_noise(clean, noise, 5.0, np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_time_shift() -> None:
    x = np.arange(1, 11, dtype=np.float32)

    def shifted(s: int) -> np.ndarray:
        y = np.zeros_like(x)
        if s >= 0:
            y[s:] = x[: len(x) - s]
        else:
            y[:s] = x[-s:]
        return y

    shifts = set()
    for seed in range(30):
        y = time_shift(x, 3, np.random.default_rng(seed))
        match = [s for s in range(-3, 4) if np.array_equal(y, shifted(s))]
        assert len(match) == 1
        shifts.add(match[0])
    assert len(shifts) > 3
    rolled = time_shift(x, 3, np.random.default_rng(0), wrap=True)
    assert sorted(rolled) == sorted(x)
    assert np.array_equal(time_shift(x, 0, np.random.default_rng(0)), x)
    assert time_shift(np.ones((2, 10)), 2, np.random.default_rng(0)).shape == (2, 10)


def test_random_gain_range() -> None:
    x = np.ones(10, np.float32)
    gains = [20 * np.log10(random_gain(x, 6.0, np.random.default_rng(s))[0]) for s in range(50)]
    assert -6.0 <= min(gains) < -3 and 3 < max(gains) <= 6.0
    up = random_gain(x, 3.0, np.random.default_rng(0), min_db=1.0)
    assert 10 ** (1 / 20) <= up[0] <= 10 ** (3 / 20) and up.dtype == np.float32
    with pytest.raises(ValueError):
        random_gain(x, 1.0, np.random.default_rng(0), min_db=2.0)


def test_spec_augment_masks_and_determinism() -> None:
    feats = torch.randn(4, 3, 40, 101, generator=torch.Generator().manual_seed(0))
    kw = dict(freq_masks=2, freq_width=8, time_masks=2, time_width=10)
    a = spec_augment(feats, generator=torch.Generator().manual_seed(5), **kw)
    b = spec_augment(feats, generator=torch.Generator().manual_seed(5), **kw)
    c = spec_augment(feats, generator=torch.Generator().manual_seed(6), **kw)
    assert a.shape == feats.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, feats)  # input untouched, output changed
    changed = a != feats  # masked cells: full rows (freq) and full columns (time)
    for item in changed.reshape(-1, 40, 101):
        rows = item.all(dim=1).sum().item()
        cols = item.all(dim=0).sum().item()
        assert rows <= 16 and cols <= 20
        assert torch.equal(item, item.all(dim=1)[:, None] | item.all(dim=0)[None, :])
    # per-item masks differ
    flat = changed.reshape(-1, 40, 101)
    assert any(not torch.equal(flat[0], flat[i]) for i in range(1, flat.shape[0]))
    # mean fill and fixed fill
    one = spec_augment(feats[0, 0], generator=torch.Generator().manual_seed(1), **kw)
    masked = one != feats[0, 0]
    torch.testing.assert_close(one[masked], feats[0, 0].mean().expand(int(masked.sum())))
    zero = spec_augment(feats, generator=torch.Generator().manual_seed(1), mask_value=0.0, **kw)
    assert ((zero == 0) | (zero == feats)).all()
    # numpy generator works too, and nothing is masked when the counts are zero
    np_a = spec_augment(feats, generator=np.random.default_rng(3), **kw)
    np_b = spec_augment(feats, generator=np.random.default_rng(3), **kw)
    assert torch.equal(np_a, np_b)
    none = spec_augment(
        feats,
        freq_masks=0,
        freq_width=8,
        time_masks=0,
        time_width=10,
        generator=np.random.default_rng(0),
    )
    assert torch.equal(none, feats)
    with pytest.raises(ValueError):
        spec_augment(torch.zeros(5), generator=np.random.default_rng(0), **kw)


def test_spec_augment_widths_capped_and_float64() -> None:
    feats = torch.randn(2, 5, 7, dtype=torch.float64)
    out = spec_augment(
        feats, freq_masks=3, freq_width=50, time_masks=3, time_width=50,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.dtype == torch.float64 and out.shape == feats.shape


def test_augment_config_roundtrip_and_defaults_off() -> None:
    cfg = AugmentConfig()
    assert not cfg.enabled and not cfg.wave_enabled and not cfg.spec_enabled
    full = AugmentConfig(
        noise_prob=0.5, snr_db=(0, 15), noise_dir="/x", shift_ms=100, gain_db=6,
        freq_masks=2, time_masks=2,
    )  # fmt: skip
    d = json.loads(json.dumps(full.to_dict()))
    assert AugmentConfig.from_dict(d) == full and full.snr_db == (0.0, 15.0)
    with pytest.raises(ValueError, match="unknown"):
        AugmentConfig.from_dict({"noise": 1})
    for bad in ({"noise_prob": 2.0}, {"snr_db": (10, 5)}, {"shift_ms": -1.0}):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


def test_wave_augment_identity_when_off() -> None:
    aug = WaveAugment()
    x = _tone(1600)
    y = aug(x, np.random.default_rng(0))
    assert np.array_equal(x, y) and y is not x
    feats = torch.randn(40, 101)
    assert aug.spec(feats, np.random.default_rng(0)) is feats
    with pytest.raises(ValueError, match="noise"):
        WaveAugment(AugmentConfig(noise_prob=0.5))


def test_wave_augment_deterministic_under_seed() -> None:
    bank = NoiseBank.from_arrays([np.random.default_rng(i).standard_normal(4000) for i in range(3)])
    cfg = AugmentConfig(noise_prob=1.0, snr_db=(10, 10), shift_ms=50, gain_db=6)
    aug = WaveAugment(cfg, noise_bank=bank)
    x = np.stack([_tone(8000), _tone(8000, 900)])
    a, b = aug(x, np.random.default_rng(42)), aug(x, np.random.default_rng(42))
    c = aug(x, np.random.default_rng(43))
    assert a.shape == x.shape and np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a[0], x[0])
    spec_cfg = AugmentConfig(freq_masks=1, time_masks=1)
    feats = torch.randn(2, 40, 101)
    s1 = WaveAugment(spec_cfg).spec(feats, np.random.default_rng(1))
    s2 = WaveAugment(spec_cfg).spec(feats, np.random.default_rng(1))
    assert torch.equal(s1, s2)


def test_noise_bank_from_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(3):
        save_audio(tmp_path / f"n{i}.wav", 0.1 * rng.standard_normal(800), 8000)
    (tmp_path / "readme.txt").write_text("not audio, ignored")
    bank = NoiseBank(tmp_path, sample_rate=16000)
    assert len(bank) == 3 and all(len(c) == 1600 for c in bank.clips)
    seg = bank.sample(5000, np.random.default_rng(1))  # longer than any clip: tiled
    assert seg.shape == (5000,) and np.array_equal(seg, bank.sample(5000, np.random.default_rng(1)))
    (tmp_path / "bad.wav").write_bytes(b"junk" * 10)
    with pytest.raises(AudioError, match="bad.wav"):
        NoiseBank(tmp_path)
    assert len(NoiseBank(tmp_path, skip_bad=True)) == 3
    assert len(NoiseBank(tmp_path, max_clips=2, skip_bad=True)) == 2
    with pytest.raises(FileNotFoundError):
        NoiseBank(tmp_path / "nope")


@pytest.mark.skipif(not SILENCE.is_dir(), reason=f"shared noise clips not found at {SILENCE}")
def test_noise_bank_speech_commands_silence() -> None:
    bank = NoiseBank(SILENCE, max_clips=5)
    assert len(bank) == 5 and all(c.shape == (16000,) for c in bank.clips)
    cfg = AugmentConfig(noise_prob=1.0, snr_db=(5, 5), noise_dir=str(SILENCE))
    aug = WaveAugment(cfg, noise_bank=bank)
    clean = _tone()
    assert abs(_snr(clean, aug(clean, np.random.default_rng(0))) - 5.0) < 0.1
