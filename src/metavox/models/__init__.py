"""Backbones: one registry, one constructor signature.

Every backbone is built as ``create_model(name, num_classes=..., input_shape=..., **options)``
and exposes ``body`` (features) and ``head`` (a linear layer), ``forward = head(body(x))``,
so ANIL and ProtoNet can use the split.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from metavox.models.conv4 import Conv4
from metavox.models.mlp import MLP

REGISTRY: dict[str, Callable[..., nn.Module]] = {"conv4": Conv4, "mlp": MLP}


def create_model(name: str, *, num_classes: int, input_shape, **options) -> nn.Module:
    """Build a registered backbone by name."""
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(REGISTRY)}") from None
    return factory(num_classes, input_shape, **options)


__all__ = ["MLP", "REGISTRY", "Conv4", "create_model"]
