"""Augmentation: SpecAugment masks, widths, determinism under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metavox.audio.augment import spec_augment


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
