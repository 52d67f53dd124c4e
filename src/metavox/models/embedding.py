"""Classifiers on a pretrained encoder's cached windows.

A frozen pretrained encoder (:mod:`metavox.audio.encoders`: Google's speech embedding, or
EfficientWord-Net's ResNet-50 trained on MSWC words) is the front-end: the feature cache
holds its embeddings, one per window (``[96, windows]`` per clip, a window every 80 ms,
for the speech embedding; ``[2048, windows]``, a 1.5 s window every 125 ms, for the
ResNet), computed once. These backbones are the trainable part on top: the windows are
pooled (mean, or max), optionally passed through a residual adapter (zero-initialised, so
it starts as the identity), L2-normalised and scaled, then a linear head. On normalised
features a head whose rows are the class prototypes is the cosine nearest-centroid rule,
which is where prototype-initialised MAML starts (``head_init="prototypes"``).

With ``trainable_blocks = k > 0`` the encoder's top ``k`` blocks belong to the model,
initialised from the pretrained weights: the front-end (and so the feature cache) stops
below them (``embedding_blocks = num_blocks - k``, see :meth:`Encoder.declared_frontend`),
and MAML's inner loop adapts them with the head.

- ``speech-embedding`` (:class:`EmbeddingClassifier`): blocks are the embedding's 20
  convolutions;
- ``mswc-resnet`` (:class:`MswcResNetClassifier`): blocks are the ResNet's stem and 16
  bottlenecks; the top block comes with the ResNet's head (pool, batch norm, L2
  normalisation).

``fusion`` (:class:`FusionClassifier`) reads both encoders at once (the ``fusion``
front-end: the speech embedding's windows and the ResNet's vector of each clip), each
base's embedding L2-normalised, concatenated (optionally with learned per-base weights
or a residual adapter), then the same scaled cosine head; both bases frozen.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metavox.audio.encoders import ENCODERS, encoder

POOLS = ("mean", "max")


def embedding_frontend(options: dict[str, Any]) -> dict[str, Any]:
    """The front-end fields the ``speech-embedding`` model with ``options`` needs: 2 s at
    16 kHz through the embedding, stopping below the ``trainable_blocks`` it trains."""
    return ENCODERS["speech-embedding"].declared_frontend(options)


def mswc_frontend(options: dict[str, Any]) -> dict[str, Any]:
    """The front-end fields the ``mswc-resnet`` model with ``options`` needs: 1.5 s (one
    window) at 16 kHz through the ResNet, stopping below the ``trainable_blocks`` it
    trains."""
    return ENCODERS["mswc-resnet"].declared_frontend(options)


class EmbeddingBody(nn.Module):
    """``[B, 1, F, windows]`` -> ``[B, dim]``: the ``encoder``'s trainable top blocks (if
    any) on each window, then the windows pooled, adapted, normalised and scaled."""

    def __init__(self, input_features: int, *, pool: str = "mean", scale: float = 10.0,
                 adapter: bool = False, trainable_blocks: int = 0,
                 encoder_name: str = "speech-embedding") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        enc = self.encoder = encoder(encoder_name)
        enc.check_blocks(trainable_blocks, "trainable_blocks")
        start = enc.num_blocks - trainable_blocks
        if trainable_blocks and input_features != enc.features(start):
            raise ValueError(
                f"input has {input_features} features per window, but trainable_blocks="
                f"{trainable_blocks} needs the front-end's activations below block "
                f"{start} of {enc.name!r}: {enc.features(start)} (embedding_blocks = {start})")
        self.top = enc.top(trainable_blocks) if trainable_blocks else None
        self.window_shape = enc.block_shape(start)
        # frozen: any pooled feature (the encoder's embedding); else the top's outputs
        dim = self.dim = enc.dim if trainable_blocks else input_features
        self.pool, self.scale = pool, float(scale)
        self.adapter = nn.Linear(dim, dim) if adapter else None
        if self.adapter is not None:  # the identity at first: x + 0
            nn.init.zeros_(self.adapter.weight)
            nn.init.zeros_(self.adapter.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1, -2)  # [B, F, windows]
        if self.top is not None:  # each window through the top blocks -> [B, dim, W]
            b, w = x.shape[0], x.shape[-1]
            x = self.top(x.transpose(1, 2).reshape(b * w, *self.window_shape))
            x = x.reshape(b, w, self.dim).transpose(1, 2)
        x = x.mean(-1) if self.pool == "mean" else x.amax(-1)
        if self.adapter is not None:
            x = x + self.adapter(x)
        return self.scale * F.normalize(x, dim=-1)


class EmbeddingClassifier(nn.Module):
    """``head(body(x))`` on cached speech-embedding windows (subclasses: another
    encoder's, :attr:`ENCODER`).

    Args:
        num_classes: outputs of the head (the episode's ways).
        input_shape: ``(features, windows)`` as the front-end gives them: ``(96, W)``, or
            with trainable blocks the flattened activations below them.
        pool: ``"mean"`` (as the nearest-centroid baseline) or ``"max"`` over windows.
        scale: the norm of the features: the cosine head's inverse temperature.
        adapter: a trainable residual linear layer before the normalisation.
        trainable_blocks: the encoder's top blocks trained with the head (0: the encoder
            is frozen; at most 20 convolutions of the speech embedding, 17 blocks of the
            MSWC ResNet); initialised from the pretrained weights.
    """

    #: the encoder (:data:`metavox.audio.encoders.ENCODERS`) whose windows the model reads
    ENCODER: ClassVar[str] = "speech-embedding"

    def __init__(self, num_classes: int, input_shape: tuple[int, int], *, pool: str = "mean",
                 scale: float = 10.0, adapter: bool = False, trainable_blocks: int = 0) -> None:
        super().__init__()
        self.body = EmbeddingBody(int(input_shape[0]), pool=pool, scale=scale,
                                  adapter=adapter, trainable_blocks=trainable_blocks,
                                  encoder_name=self.ENCODER)
        self.feature_dim = self.body.dim
        self.head = nn.Linear(self.body.dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class MswcResNetClassifier(EmbeddingClassifier):
    """``head(body(x))`` on cached windows of EfficientWord-Net's ResNet-50
    (:mod:`metavox.audio.mswc_resnet`): ``input_shape`` is ``(2048, W)`` (one window per
    1.5 s clip), or with ``trainable_blocks = k`` the flattened activations below the top
    ``k`` blocks (``k = 1``: 20480 per window, the last bottleneck's input). Needs
    ``pip install --no-deps efficientword-net==1.0.5``. Arguments as
    :class:`EmbeddingClassifier`."""

    ENCODER: ClassVar[str] = "mswc-resnet"


def fusion_frontend(options: dict[str, Any]) -> dict[str, Any]:
    """The front-end fields the ``fusion`` model needs: 2 s at 16 kHz through both
    encoders, whole and frozen (``kind="fusion"``: the speech embedding's 16 windows and
    the ResNet's vector of the centred 1.5 s)."""
    _frozen_only(int(options.get("trainable_blocks", 0)))
    return {"kind": "fusion", "duration": ENCODERS["speech-embedding"].clip_seconds,
            "sample_rate": ENCODERS["speech-embedding"].sample_rate}


def _frozen_only(trainable_blocks: int) -> None:
    if trainable_blocks:
        raise ValueError(
            f"the fusion model holds both bases frozen: trainable_blocks must be 0, got "
            f"{trainable_blocks} (train an encoder's top blocks with the `speech-embedding` "
            f"or `mswc-resnet` model)")


class FusionBody(nn.Module):
    """``[B, 1, 96 * W + 2048, 1]`` (the ``fusion`` front-end,
    :func:`metavox.audio.features.fusion_layout`) -> ``[B, 96 + 2048]``.

    The speech embedding's ``W`` windows are pooled (mean or max); each base's embedding
    is L2-normalised; the two unit vectors are concatenated, each times its base's weight
    (``base_weights``: two learned scalars, initialised to 1; else fixed at 1), optionally
    passed through a zero-initialised residual adapter, then normalised and scaled. At
    initialisation this is plain concatenation: the cosine of two such features is the
    mean of the two bases' cosines, so the prototype-initialised head starts as cosine
    nearest centroid on the concatenated unit vectors.
    """

    def __init__(self, input_features: int, *, pool: str = "mean", scale: float = 10.0,
                 base_weights: bool = False, adapter: bool = False) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        se, rn = ENCODERS["speech-embedding"], ENCODERS["mswc-resnet"]
        windows, extra = divmod(int(input_features) - rn.dim, se.dim)
        if windows < 1 or extra:
            raise ValueError(
                f"the fusion model reads the `fusion` front-end (96 values per speech-"
                f"embedding window, then 2048): {input_features} features is not "
                f"96 * W + 2048")
        self.windows, self.speech_dim, self.resnet_dim = windows, se.dim, rn.dim
        dim = self.dim = se.dim + rn.dim
        self.pool, self.scale = pool, float(scale)
        self.base_weights = nn.Parameter(torch.ones(2)) if base_weights else None
        self.adapter = nn.Linear(dim, dim) if adapter else None
        if self.adapter is not None:  # the identity at first: x + 0
            nn.init.zeros_(self.adapter.weight)
            nn.init.zeros_(self.adapter.bias)

    def embeddings(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Each base's unit vector: ``([B, 96], [B, 2048])``."""
        x = x.flatten(1)  # [B, 96 * W + 2048] (one frame)
        cut = self.speech_dim * self.windows
        speech = x[:, :cut].reshape(-1, self.speech_dim, self.windows)
        speech = speech.mean(-1) if self.pool == "mean" else speech.amax(-1)
        return F.normalize(speech, dim=-1), F.normalize(x[:, cut:], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        speech, resnet = self.embeddings(x)
        if self.base_weights is not None:
            speech, resnet = speech * self.base_weights[0], resnet * self.base_weights[1]
        z = torch.cat([speech, resnet], dim=-1)
        if self.adapter is not None:
            z = z + self.adapter(z)
        return self.scale * F.normalize(z, dim=-1)


class FusionClassifier(nn.Module):
    """``head(body(x))`` on both pretrained bases at once (:class:`FusionBody`): the
    speech embedding's pooled windows and EfficientWord-Net's ResNet vector, each
    L2-normalised, concatenated (with learned per-base weights if ``base_weights``, a
    residual adapter if ``adapter``), normalised and scaled, then a linear head.

    Args:
        num_classes: outputs of the head (the episode's ways).
        input_shape: ``(96 * W + 2048, 1)`` as the ``fusion`` front-end gives it
            (``(3584, 1)`` for 2 s clips).
        pool: ``"mean"`` or ``"max"`` over the speech embedding's windows.
        scale: the norm of the features: the cosine head's inverse temperature.
        base_weights: two learned scalars weighting the bases' unit vectors (initialised
            to 1: plain concatenation).
        adapter: a trainable residual linear layer (zero-initialised) on the concatenation.
        trainable_blocks: must be 0: both bases are frozen (a ``ValueError`` otherwise).

    Needs both bases: ``pip install 'metavox[pretrained]'`` and
    ``pip install --no-deps efficientword-net==1.0.5``.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int], *, pool: str = "mean",
                 scale: float = 10.0, base_weights: bool = False, adapter: bool = False,
                 trainable_blocks: int = 0) -> None:
        super().__init__()
        _frozen_only(int(trainable_blocks))
        if int(input_shape[1]) != 1:
            raise ValueError(f"the fusion front-end gives one frame per clip, got input_shape "
                             f"{tuple(input_shape)}")
        self.body = FusionBody(int(input_shape[0]), pool=pool, scale=scale,
                               base_weights=base_weights, adapter=adapter)
        self.feature_dim = self.body.dim
        self.head = nn.Linear(self.body.dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
