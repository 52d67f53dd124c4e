"""Reptile (Nichol et al. 2018) expressed as a loss, so the common optimizer loop trains it.

Reptile moves the initialisation θ towards each task's adapted weights φ:
θ ← θ + ε·mean_t(φ_t − θ). The surrogate ½‖θ − stop_grad(φ_t)‖², averaged over tasks,
has gradient θ − mean_t φ_t, so one SGD step with learning rate ε on it is exactly
Reptile's update (with Adam it is Reptile with an adaptive outer step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metavox.meta.base import Learner, MetaAlgorithm, accuracy, export_module, is_classification
from metavox.meta.functional import forward, functional_buffers, meta_parameters
from metavox.meta.inner import LossFn, adapt, inner_loop


class Reptile(MetaAlgorithm):
    """Reptile: first-order inner SGD, outer step towards the adapted weights.

    ``train_on_query`` adapts on support and query together during meta-training (the
    task's whole data, as in the paper); reported accuracy is always query accuracy after
    adapting on the support set alone.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.4,
        steps: int = 5,
        eval_steps: int | None = None,
        train_on_query: bool = False,
        track_before: bool = True,
        loss_fn: LossFn | None = None,
        strategy: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(model, loss_fn=loss_fn, strategy=strategy, chunk_size=chunk_size)
        self.inner_lr = float(inner_lr)
        self.steps = int(steps)
        self.eval_steps = int(eval_steps) if eval_steps is not None else self.steps
        self.train_on_query = bool(train_on_query)
        self.track_before = bool(track_before)

    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> dict[str, Tensor]:
        params = meta_parameters(self.model)
        buffers = functional_buffers(self.model)
        metrics: dict[str, Tensor] = {}
        classify = is_classification(query_y)
        if self.track_before:
            with torch.no_grad():
                out0 = forward(self.model, params, query_x, buffers)
                metrics["loss_before"] = self.loss_fn(out0, query_y)
                if classify:
                    metrics["accuracy_before"] = accuracy(out0, query_y)
        steps = self.steps if self.training else self.eval_steps
        opts = dict(steps=steps, lr=self.inner_lr, first_order=True, loss_fn=self.loss_fn,
                    buffers=buffers)
        record = self.start_recording(metrics, classify)
        trajectory = inner_loop(self.model, params, support_x, support_y, **opts)
        fast = self.follow(trajectory, params, record_until=steps if record else 0,
                           query_logits=lambda p: forward(self.model, p, query_x, buffers),
                           query_y=query_y, metrics=metrics)
        fast = {k: v.detach() for k, v in fast.items()}
        with torch.no_grad():
            out = forward(self.model, fast, query_x, buffers)
            metrics["query_loss"] = self.loss_fn(out, query_y)
            if classify:
                metrics["accuracy"] = accuracy(out, query_y)
                if record:
                    metrics[f"accuracy@{steps}"] = metrics["accuracy"]
        if self.train_on_query and self.training:
            x = torch.cat([support_x, query_x])
            y = torch.cat([support_y, query_y])
            fast = {k: v.detach() for k, v in adapt(self.model, params, x, y, **opts).items()}
        surrogate = sum(0.5 * (params[k] - fast[k]).pow(2).sum() for k in params)
        metrics["loss"] = surrogate
        return metrics

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        *,
        steps: int | None = None,
        classes: list[str] | None = None,
    ) -> Learner:
        """Fine-tune a copy of the model on the support set with plain SGD."""
        steps = self.eval_steps if steps is None else int(steps)
        params = {k: v.detach() for k, v in meta_parameters(self.model).items()}
        with torch.enable_grad():
            fast = adapt(self.model, params, support_x, support_y, steps=steps,
                         lr=self.inner_lr, first_order=True, loss_fn=self.loss_fn)
        return Learner(export_module(self.model, fast, support_x), classes)
