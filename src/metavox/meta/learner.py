"""Learners: what adaptation returns, and how it is saved, loaded and exported.

A :class:`Learner` wraps a plain ``nn.Module`` adapted to one task, with the task's class
names. It saves itself as one safetensors file (weights) with JSON metadata (its *kind*,
the few numbers needed to rebuild its structure, the class names, and whatever the caller
adds), and :meth:`Learner.load` rebuilds it around a freshly built base model of the
meta-trained architecture. Each algorithm declares the kind of module its ``adapt``
returns with :func:`register_learner_kind`, so enrollment, prediction and export never
inspect module types.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from metavox.storage import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint

#: kind -> ``rebuild(model, info) -> module``: the adapted module's structure around a
#: freshly built base model, before its saved weights are loaded
LEARNER_KINDS: dict[str, Callable[[nn.Module, dict[str, Any]], nn.Module]] = {}
#: kind -> ``features(module) -> the part of the adapted module that embeds an input``
#: (what its class scores compare; open-set background scoring uses it)
LEARNER_FEATURES: dict[str, Callable[[nn.Module], nn.Module]] = {}


def register_learner_kind(name: str, *, features: Callable[[nn.Module], nn.Module]):
    """Decorator: register ``rebuild(model, info) -> nn.Module`` for learners of ``name``,
    and ``features(module)``, the embedding part of such a module."""

    def decorate(fn: Callable[[nn.Module, dict[str, Any]], nn.Module]):
        if name in LEARNER_KINDS:
            raise ValueError(f"learner kind {name!r} is registered twice")
        LEARNER_KINDS[name] = fn
        LEARNER_FEATURES[name] = features
        return fn

    return decorate


@register_learner_kind("model", features=lambda module: module.body)
def _the_model(model: nn.Module, info: dict[str, Any]) -> nn.Module:
    """The base model itself, with adapted weights (MAML, Reptile, ...)."""
    return model


@register_learner_kind("body_head", features=lambda module: module[0])
def _body_then_head(model: nn.Module, info: dict[str, Any]) -> nn.Module:
    """``Sequential(model.body, model.head)`` (ANIL's learner)."""
    return nn.Sequential(model.body, model.head)


class Learner:
    """A model adapted to one task: classifies (or regresses) new inputs.

    It wraps a plain ``nn.Module`` in eval mode. For models with BatchNorm, its running
    statistics are the support set's statistics under the adapted weights, so single
    inputs are classified the same way as in a batch (no transduction at deployment).
    ``kind`` and ``info`` say how to rebuild the module's structure (see
    :data:`LEARNER_KINDS`).
    """

    FORMAT_KIND = "learner"

    def __init__(self, module: nn.Module, classes: list[str] | None = None, *,
                 kind: str = "model", info: dict[str, Any] | None = None) -> None:
        if kind not in LEARNER_KINDS:
            raise ValueError(f"unknown learner kind {kind!r}; known: {sorted(LEARNER_KINDS)}")
        self.module = module.eval()
        self.classes = classes
        self.kind = kind
        self.info = dict(info or {})

    def __call__(self, x: Tensor) -> Tensor:
        """Outputs (logits) for a batch ``x``."""
        with torch.no_grad():
            return self.module(x)

    def predict(self, x: Tensor) -> Tensor:
        """Predicted label index per row of ``x``."""
        return self(x).argmax(dim=-1)

    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities per row of ``x``."""
        return self(x).softmax(dim=-1)

    def features(self, x: Tensor) -> Tensor:
        """``[N, dim]``: the inputs embedded by the adapted module's feature part."""
        with torch.no_grad():
            return LEARNER_FEATURES[self.kind](self.module)(x).flatten(1)

    def to_module(self) -> nn.Module:
        """The adapted network as a plain ``nn.Module`` (for export or serving)."""
        return self.module

    # -- files ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None, *,
             tensors: dict[str, Tensor] | None = None) -> Path:
        """Write the learner (weights + kind, info, classes and ``meta``, and the caller's
        ``tensors``, e.g. ``open_set/background``) atomically."""
        tensors = {**(tensors or {}),
                   **{f"module/{k}": v for k, v in self.module.state_dict().items()}}
        header = {**(meta or {}), "kind": self.FORMAT_KIND, "learner": self.kind,
                  "info": self.info, "classes": self.classes}
        return save_checkpoint(path, Checkpoint(tensors, header))

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, model: nn.Module, *,
                        source: str = "checkpoint") -> Learner:
        """Rebuild a saved learner around ``model``, a freshly built base model of the
        architecture it was adapted from (its weights are replaced)."""
        meta = ckpt.meta
        if meta.get("kind") != cls.FORMAT_KIND:
            raise CheckpointError(f"{source} is not an adapted model (run `metavox adapt` "
                                  "first); it looks like a meta-training checkpoint")
        kind = meta.get("learner")
        if kind not in LEARNER_KINDS:
            raise CheckpointError(f"{source}: unknown learner kind {kind!r}; this metavox "
                                  f"knows {sorted(LEARNER_KINDS)}")
        module = LEARNER_KINDS[kind](model, meta.get("info", {}))
        try:
            module.load_state_dict(ckpt.section("module"))
        except RuntimeError as err:
            raise CheckpointError(f"{source}: weights do not fit the stored model ({err})"
                                  ) from None
        return cls(module, meta.get("classes"), kind=kind, info=meta.get("info", {}))

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: nn.Module) -> Learner:
        """Read a learner saved by :meth:`save`, rebuilt around ``model``."""
        return cls.from_checkpoint(load_checkpoint(path), model, source=str(path))


def export_module(
    model: nn.Module, params: dict[str, Tensor], support_x: Tensor
) -> nn.Module:
    """A deep copy of ``model`` with ``params`` loaded, in eval mode, with every
    BatchNorm's running statistics set to ``support_x``'s statistics under those weights."""
    module = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in params:
                p.copy_(params[name].detach())
    bns = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    module.eval()
    if bns and support_x.shape[0] > 1:
        saved = [(m.momentum, m.track_running_stats) for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, that batch's stats
            m.track_running_stats = True
            m.train()
        with torch.no_grad():
            module(support_x)
        for m, (momentum, track) in zip(bns, saved, strict=True):
            m.momentum = momentum
            m.track_running_stats = track
            m.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
