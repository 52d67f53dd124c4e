"""ANIL (Raghu et al. 2020): adapt only the head; the body is meta-learned in the outer loop.

The body's features for a task's support and query sets are computed once, and the inner
loop runs on the small head alone, which makes ANIL far cheaper than MAML while keeping a
second-order meta-gradient for the head's initialisation and the body.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metavox.meta.base import (
    InnerLoopAlgorithm,
    StepRecorder,
    TaskSettings,
)
from metavox.meta.functional import forward, functional_buffers, meta_parameters
from metavox.meta.inner import inner_loop
from metavox.meta.learner import export_module
from metavox.meta.registry import register_algorithm


def split_body_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(model.body, model.head)``: the split every metavox backbone exposes."""
    body, head = getattr(model, "body", None), getattr(model, "head", None)
    if not isinstance(body, nn.Module) or not isinstance(head, nn.Module):
        raise TypeError(
            f"{type(model).__name__} has no `body` and `head` submodules; pass them "
            "explicitly, e.g. ANIL(body=..., head=...)"
        )
    return body, head


@register_algorithm("anil", description="ANIL (Raghu et al. 2020): adapt the head only, on "
                    "features of a meta-learned body")
class ANIL(InnerLoopAlgorithm):
    """Almost No Inner Loop: MAML on the head, features from a meta-learned body.

    Give either a model with ``body`` and ``head`` submodules (``head(body(x))``), or
    ``body=`` and ``head=`` explicitly. ``common``: see
    :class:`~metavox.meta.base.InnerLoopAlgorithm`.
    """

    learner_kind = "body_head"

    def __init__(self, model: nn.Module | None = None, *, body: nn.Module | None = None,
                 head: nn.Module | None = None, first_order: bool = False,
                 **common: Any) -> None:
        if model is not None:
            body, head = split_body_head(model)
        if body is None or head is None:
            raise TypeError("ANIL needs a model with body/head, or body= and head=")
        super().__init__(nn.Sequential(body, head), **common)
        self.body, self.head = body, head
        self.first_order = bool(first_order)

    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
        settings: TaskSettings,
    ) -> dict[str, Tensor]:
        body_params = meta_parameters(self.body)
        body_buffers = functional_buffers(self.body)
        fs = forward(self.body, body_params, support_x, body_buffers)
        fq = forward(self.body, body_params, query_x, body_buffers)
        head_params = meta_parameters(self.head)
        head_buffers = functional_buffers(self.head)
        run = lambda p: forward(self.head, p, fq, head_buffers)  # noqa: E731
        metrics: dict[str, Tensor] = {}
        if self.track_before:
            with torch.no_grad():
                self.before(metrics, run(head_params), query_y)
        trajectory = inner_loop(self.head, head_params, fs, support_y, steps=settings.steps,
                                lr=self.inner_lr, first_order=self.first_order,
                                loss_fn=self.loss_fn, buffers=head_buffers)
        record = StepRecorder(settings, run, query_y)
        out = run(record.follow(trajectory, head_params))
        loss = self.loss_fn(out, query_y)
        return record.finish(metrics, objective=loss, query_loss=loss, logits=out)

    def adapted_module(self, support_x: Tensor, support_y: Tensor,
                       steps: int) -> tuple[nn.Module, dict[str, Any]]:
        """The body as it is, then the head adapted on the body's support features."""
        body = export_module(self.body, {}, support_x)
        with torch.no_grad():
            feats = body(support_x)
        return nn.Sequential(body, self.adapt_head(feats, support_y, steps=steps)), {}

    def adapt_head(self, features: Tensor, support_y: Tensor, *,
                   steps: int | None = None) -> nn.Module:
        """The head adapted to support ``features`` already computed by the body: the
        fast path when enrolled clips are embedded once and the head is re-fit often."""
        steps = self.eval_steps if steps is None else int(steps)
        with torch.enable_grad():
            return self.fine_tuned(self.head, features, support_y, steps, lr=self.inner_lr)
