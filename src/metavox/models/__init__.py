"""Backbones: one registry, one constructor signature.

Every backbone is built as ``create_model(name, num_classes=..., input_shape=..., **options)``
and exposes ``body`` (features, ending in a flat ``[B, feature_dim]`` vector) and ``head``
(a linear layer), ``forward = head(body(x))``, so ANIL and ProtoNet can use the split.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from metavox.models.conv4 import Conv4
from metavox.models.dscnn import DSCNN
from metavox.models.embedding import (
    EmbeddingClassifier,
    FusionClassifier,
    MswcResNetClassifier,
    embedding_frontend,
    fusion_frontend,
    mswc_frontend,
)
from metavox.models.mlp import MLP
from metavox.models.resnet import ResNet8

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "conv4": Conv4,
    "mlp": MLP,
    "dscnn": DSCNN,
    "resnet8": ResNet8,
    "res8": ResNet8,
    "speech-embedding": EmbeddingClassifier,
    "mswc-resnet": MswcResNetClassifier,
    "fusion": FusionClassifier,
}

ALIASES: dict[str, str] = {"res8": "resnet8"}

DESCRIPTIONS: dict[str, str] = {
    "conv4": "Conv-4: 4 x (3x3 conv, BN, ReLU, 2x2 max-pool), the few-shot standard",
    "mlp": "MLP: hidden ReLU layers (Finn et al. sinusoid net, 1-40-40-1)",
    "dscnn": "DS-CNN-S: strided conv + 4 depthwise-separable blocks, 64 ch (Hello Edge KWS)",
    "resnet8": "res8: 3x3 conv, avg-pool, 3 residual blocks, 45 ch (Tang & Lin KWS); alias res8",
    "speech-embedding": "pooled, normalised Google speech-embedding windows + a head; the frozen "
                        "embedding is its front-end (needs metavox[pretrained])",
    "mswc-resnet": "pooled, normalised windows of EfficientWord-Net's ResNet-50 (MSWC words) + "
                   "a head; the frozen ResNet is its front-end (needs `pip install --no-deps "
                   "efficientword-net==1.0.5`)",
    "fusion": "both pretrained bases, frozen: the speech embedding's pooled windows and the "
              "MSWC ResNet's vector, each L2-normalised, concatenated (learned per-base weights "
              "or a residual adapter optional) + a head (needs both bases installed)",
}

#: The front-end a backbone declares, as a function of its options: the ``FrontendConfig``
#: fields it needs (a pretrained encoder expects its own features, and a model that trains
#: the encoder's top blocks needs the features below them). A run's ``[frontend]`` settings
#: fill in the rest and may not contradict these; the feature cache keys on the result.
#: The from-scratch backbones declare none: they learn from any front-end.
FRONTENDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    # 2 s around the clip: 16 windows of 775 ms, every 80 ms
    "speech-embedding": embedding_frontend,
    # one 1.5 s window around the clip
    "mswc-resnet": mswc_frontend,
    # both, frozen: 2 s through the speech embedding, its centred 1.5 s through the ResNet
    "fusion": fusion_frontend,
}

_FIXED = ("self", "num_classes", "input_shape")


class UnknownOptionError(TypeError, ValueError):
    """An option the model does not take: a ``TypeError`` like any bad keyword argument,
    and a ``ValueError`` like an unknown model name, so either ``except`` catches it."""


def list_models() -> dict[str, str]:
    """Canonical model names (aliases left out) mapped to one-line descriptions."""
    return {name: DESCRIPTIONS[name] for name in REGISTRY if name not in ALIASES}


def model_frontend(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The front-end fields the backbone ``name`` with ``options`` fixes (empty: any
    front-end)."""
    declare = FRONTENDS.get(ALIASES.get(name, name))
    return declare(dict(options or {})) if declare is not None else {}


def model_options(name: str) -> list[str] | None:
    """The options a registered model accepts, or ``None`` if it takes any ``**kwargs``."""
    params = inspect.signature(REGISTRY[name]).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [
        p.name for p in params
        if p.name not in _FIXED and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def create_model(name: str, *, num_classes: int, input_shape, **options) -> nn.Module:
    """Build a registered backbone by name.

    An unknown name raises ``ValueError``; an unknown option, :class:`UnknownOptionError`
    naming the model and the options it accepts (checked before anything is built).
    """
    try:
        factory = REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}; registered: {sorted(REGISTRY)}{hint}"
        ) from None
    accepted = model_options(name)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        raise UnknownOptionError(
            f"unknown option(s) {unknown} for model {name!r}; it accepts: {accepted}"
        )
    return factory(num_classes, input_shape, **options)


__all__ = [
    "ALIASES", "DESCRIPTIONS", "DSCNN", "FRONTENDS", "MLP", "REGISTRY", "Conv4",
    "EmbeddingClassifier", "FusionClassifier", "MswcResNetClassifier", "ResNet8",
    "UnknownOptionError",
    "create_model", "list_models", "model_frontend", "model_options",
]
