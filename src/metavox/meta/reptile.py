"""Reptile (Nichol et al. 2018) expressed as a loss, so the common optimizer loop trains it.

Reptile moves the initialisation θ towards each task's adapted weights φ:
θ ← θ + ε·mean_t(φ_t − θ). The surrogate ½‖θ − stop_grad(φ_t)‖², averaged over tasks,
has gradient θ − mean_t φ_t, so one SGD step with learning rate ε on it is exactly
Reptile's update (with Adam it is Reptile with an adaptive outer step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metavox.meta.base import InnerLoopAlgorithm, StepRecorder, TaskSettings
from metavox.meta.functional import forward, functional_buffers, meta_parameters
from metavox.meta.inner import adapt, inner_loop
from metavox.meta.registry import register_algorithm


@register_algorithm("reptile", description="Reptile (Nichol et al. 2018): first-order, outer "
                    "step towards the adapted weights")
class Reptile(InnerLoopAlgorithm):
    """Reptile: first-order inner SGD, outer step towards the adapted weights.

    ``train_on_query`` adapts on support and query together during meta-training (the
    task's whole data, as in the paper); reported accuracy is always query accuracy after
    adapting on the support set alone. ``common``: see
    :class:`~metavox.meta.base.InnerLoopAlgorithm`.
    """

    def __init__(self, model: nn.Module, *, train_on_query: bool = False,
                 **common: Any) -> None:
        super().__init__(model, **common)
        self.train_on_query = bool(train_on_query)

    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
        settings: TaskSettings,
    ) -> dict[str, Tensor]:
        params = meta_parameters(self.model)
        buffers = functional_buffers(self.model)
        metrics: dict[str, Tensor] = {}
        run = lambda p: forward(self.model, p, query_x, buffers)  # noqa: E731
        if self.track_before:
            with torch.no_grad():
                self.before(metrics, run(params), query_y)
        opts = dict(steps=settings.steps, lr=self.inner_lr, first_order=True,
                    loss_fn=self.loss_fn, buffers=buffers)
        record = StepRecorder(settings, run, query_y)
        fast = record.follow(inner_loop(self.model, params, support_x, support_y, **opts),
                             params)
        fast = {k: v.detach() for k, v in fast.items()}
        with torch.no_grad():
            out = run(fast)
        query_loss = self.loss_fn(out, query_y)
        if self.train_on_query and self.training:
            x = torch.cat([support_x, query_x])
            y = torch.cat([support_y, query_y])
            fast = {k: v.detach() for k, v in adapt(self.model, params, x, y, **opts).items()}
        surrogate = sum(0.5 * (params[k] - fast[k]).pow(2).sum() for k in params)
        return record.finish(metrics, objective=surrogate, query_loss=query_loss, logits=out)

    def adapted_module(self, support_x: Tensor, support_y: Tensor,
                       steps: int) -> tuple[nn.Module, dict[str, Any]]:
        """A copy of the model fine-tuned on the support set with plain SGD."""
        return self.fine_tuned(self.model, support_x, support_y, steps, lr=self.inner_lr), {}
