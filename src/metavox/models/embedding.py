"""A classifier on the pretrained speech embedding's cached windows.

The frozen speech embedding (:mod:`metavox.audio.speech_embedding`) is the front-end:
the feature cache holds its 96-d vectors, one per 80 ms window, ``[96, windows]`` per
clip, computed once. This backbone is the trainable part on top: the windows are pooled
(mean, or max), optionally passed through a residual adapter (zero-initialised, so it starts
as the identity), L2-normalised and scaled, then a linear head. On normalised features a
head whose rows are the class prototypes is the cosine nearest-centroid rule, which is
where prototype-initialised MAML starts (``head_init="prototypes"``).

With ``trainable_blocks = k > 0`` the embedding's top ``k`` convolutions belong to the
model, initialised from the pretrained weights: the front-end (and so the feature cache)
stops below them (``embedding_blocks = 20 - k``, see :func:`embedding_frontend`), and
MAML's inner loop adapts them with the head.
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from metavox.audio.speech_embedding import (
    NUM_BLOCKS,
    SpeechEmbeddingBody,
    block_shape,
    body_state,
    pretrained_state,
)

POOLS = ("mean", "max")


def embedding_frontend(options: dict[str, Any]) -> dict[str, Any]:
    """The front-end fields the ``speech-embedding`` model with ``options`` needs: 2 s at
    16 kHz through the embedding, stopping below the ``trainable_blocks`` it trains."""
    k = int(options.get("trainable_blocks", 0))
    return {"kind": "speech-embedding", "duration": 2.0, "sample_rate": 16000,
            "embedding_blocks": NUM_BLOCKS - k}


class EmbeddingBody(nn.Module):
    """``[B, 1, F, windows]`` -> ``[B, 96]``: the trainable top convolutions (if any) on each
    window, then the windows pooled, adapted, normalised and scaled."""

    def __init__(self, input_features: int, *, pool: str = "mean", scale: float = 10.0,
                 adapter: bool = False, trainable_blocks: int = 0) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if not 0 <= trainable_blocks <= NUM_BLOCKS:
            raise ValueError(f"trainable_blocks must be in 0..{NUM_BLOCKS}, "
                             f"got {trainable_blocks}")
        start = NUM_BLOCKS - trainable_blocks
        if trainable_blocks and input_features != math.prod(block_shape(start)):
            raise ValueError(
                f"input has {input_features} features per window, but trainable_blocks="
                f"{trainable_blocks} needs the front-end's activations below convolution "
                f"{start}: {math.prod(block_shape(start))} (embedding_blocks = {start})")
        self.top = None
        if trainable_blocks:
            self.top = SpeechEmbeddingBody(start)
            self.top.load_state_dict(body_state(pretrained_state(), self.top))
        self.window_shape = block_shape(start)
        # frozen: any pooled feature (96 from the embedding); else the top's 96 outputs
        dim = self.dim = block_shape(NUM_BLOCKS)[0] if trainable_blocks else input_features
        self.pool, self.scale = pool, float(scale)
        self.adapter = nn.Linear(dim, dim) if adapter else None
        if self.adapter is not None:  # the identity at first: x + 0
            nn.init.zeros_(self.adapter.weight)
            nn.init.zeros_(self.adapter.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1, -2)  # [B, F, windows]
        if self.top is not None:  # each window through the top convolutions -> [B, 96, W]
            b, w = x.shape[0], x.shape[-1]
            x = self.top(x.transpose(1, 2).reshape(b * w, *self.window_shape))
            x = x.reshape(b, w, self.dim).transpose(1, 2)
        x = x.mean(-1) if self.pool == "mean" else x.amax(-1)
        if self.adapter is not None:
            x = x + self.adapter(x)
        return self.scale * F.normalize(x, dim=-1)


class EmbeddingClassifier(nn.Module):
    """``head(body(x))`` on cached speech-embedding windows.

    Args:
        num_classes: outputs of the head (the episode's ways).
        input_shape: ``(features, windows)`` as the front-end gives them: ``(96, W)``, or
            with trainable blocks the flattened activations below them.
        pool: ``"mean"`` (as the nearest-centroid baseline) or ``"max"`` over windows.
        scale: the norm of the features: the cosine head's inverse temperature.
        adapter: a trainable residual linear layer before the normalisation.
        trainable_blocks: the embedding's top convolutions trained with the head (0: the
            embedding is frozen; at most 20); initialised from the pretrained weights
            (needs ``metavox[pretrained]``).
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int], *, pool: str = "mean",
                 scale: float = 10.0, adapter: bool = False, trainable_blocks: int = 0) -> None:
        super().__init__()
        self.body = EmbeddingBody(int(input_shape[0]), pool=pool, scale=scale,
                                  adapter=adapter, trainable_blocks=trainable_blocks)
        self.feature_dim = self.body.dim
        self.head = nn.Linear(self.body.dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
