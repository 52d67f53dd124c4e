"""A classifier on the pretrained speech embedding's cached windows.

The frozen speech embedding (:mod:`metavox.audio.speech_embedding`) is the front-end:
the feature cache holds its 96-d vectors, one per 80 ms window, ``[96, windows]`` per
clip, computed once. This backbone is the trainable part on top: the windows are pooled
(mean, or max), optionally passed through a residual adapter (zero-initialised, so it starts
as the identity), L2-normalised and scaled, then a linear head. On normalised features a
head whose rows are the class prototypes is the cosine nearest-centroid rule, which is
where prototype-initialised MAML starts (``head_init="prototypes"``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

POOLS = ("mean", "max")


class EmbeddingPool(nn.Module):
    """``[B, 1, 96, windows]`` -> ``[B, 96]``: pooled, adapted, normalised and scaled."""

    def __init__(self, dim: int, *, pool: str = "mean", scale: float = 10.0,
                 adapter: bool = False) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool, self.scale = pool, float(scale)
        self.adapter = nn.Linear(dim, dim) if adapter else None
        if self.adapter is not None:  # the identity at first: x + 0
            nn.init.zeros_(self.adapter.weight)
            nn.init.zeros_(self.adapter.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1, -2)  # [B, 96, windows]
        x = x.mean(-1) if self.pool == "mean" else x.amax(-1)
        if self.adapter is not None:
            x = x + self.adapter(x)
        return self.scale * F.normalize(x, dim=-1)


class EmbeddingClassifier(nn.Module):
    """``head(body(x))`` on cached speech-embedding windows (``input_shape = (96, W)``).

    Args:
        num_classes: outputs of the head (the episode's ways).
        input_shape: ``(96, windows)`` as the front-end gives them.
        pool: ``"mean"`` (as the nearest-centroid baseline) or ``"max"`` over windows.
        scale: the norm of the features: the cosine head's inverse temperature.
        adapter: a trainable residual linear layer before the normalisation.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int], *, pool: str = "mean",
                 scale: float = 10.0, adapter: bool = False) -> None:
        super().__init__()
        dim = int(input_shape[0])
        self.body = EmbeddingPool(dim, pool=pool, scale=scale, adapter=adapter)
        self.feature_dim = dim
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
