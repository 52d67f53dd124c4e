"""ANIL (Raghu et al. 2020): adapt only the head; the body is meta-learned in the outer loop.

The body's features for a task's support and query sets are computed once, and the inner
loop runs on the small head alone, which makes ANIL far cheaper than MAML while keeping a
second-order meta-gradient for the head's initialisation and the body.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metavox.meta.base import Learner, MetaAlgorithm, accuracy, export_module, is_classification
from metavox.meta.functional import forward, functional_buffers, meta_parameters
from metavox.meta.inner import LossFn, adapt, inner_loop


def split_body_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(model.body, model.head)``: the split every metavox backbone exposes."""
    body, head = getattr(model, "body", None), getattr(model, "head", None)
    if not isinstance(body, nn.Module) or not isinstance(head, nn.Module):
        raise TypeError(
            f"{type(model).__name__} has no `body` and `head` submodules; pass them "
            "explicitly, e.g. ANIL(body=..., head=...)"
        )
    return body, head


class ANIL(MetaAlgorithm):
    """Almost No Inner Loop: MAML on the head, features from a meta-learned body.

    Give either a model with ``body`` and ``head`` submodules (``head(body(x))``), or
    ``body=`` and ``head=`` explicitly.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        body: nn.Module | None = None,
        head: nn.Module | None = None,
        inner_lr: float = 0.4,
        steps: int = 1,
        eval_steps: int | None = None,
        first_order: bool = False,
        track_before: bool = True,
        loss_fn: LossFn | None = None,
        strategy: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        if model is not None:
            body, head = split_body_head(model)
        if body is None or head is None:
            raise TypeError("ANIL needs a model with body/head, or body= and head=")
        super().__init__(
            nn.Sequential(body, head), loss_fn=loss_fn, strategy=strategy, chunk_size=chunk_size
        )
        self.body, self.head = body, head
        self.inner_lr = float(inner_lr)
        self.steps = int(steps)
        self.eval_steps = int(eval_steps) if eval_steps is not None else self.steps
        self.first_order = bool(first_order)
        self.track_before = bool(track_before)

    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> dict[str, Tensor]:
        body_params = meta_parameters(self.body)
        body_buffers = functional_buffers(self.body)
        fs = forward(self.body, body_params, support_x, body_buffers)
        fq = forward(self.body, body_params, query_x, body_buffers)
        head_params = meta_parameters(self.head)
        head_buffers = functional_buffers(self.head)
        metrics: dict[str, Tensor] = {}
        classify = is_classification(query_y)
        if self.track_before:
            with torch.no_grad():
                out0 = forward(self.head, head_params, fq, head_buffers)
                metrics["loss_before"] = self.loss_fn(out0, query_y)
                if classify:
                    metrics["accuracy_before"] = accuracy(out0, query_y)
        steps = self.steps if self.training else self.eval_steps
        record = self.start_recording(metrics, classify)
        trajectory = inner_loop(self.head, head_params, fs, support_y, steps=steps,
                                lr=self.inner_lr, first_order=self.first_order,
                                loss_fn=self.loss_fn, buffers=head_buffers)
        fast = self.follow(trajectory, head_params, record_until=steps if record else 0,
                           query_logits=lambda p: forward(self.head, p, fq, head_buffers),
                           query_y=query_y, metrics=metrics)
        out = forward(self.head, fast, fq, head_buffers)
        loss = self.loss_fn(out, query_y)
        return self.finish(metrics, loss, loss, out, query_y, classify=classify,
                           record_step=steps if record else None)

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        *,
        steps: int | None = None,
        classes: list[str] | None = None,
    ) -> Learner:
        """Adapt the head on the body's features of the support set."""
        body = export_module(self.body, {}, support_x)
        with torch.no_grad():
            feats = body(support_x)
        return Learner(nn.Sequential(body, self.adapt_head(feats, support_y, steps=steps)),
                       classes)

    def adapt_head(self, features: Tensor, support_y: Tensor, *,
                   steps: int | None = None) -> nn.Module:
        """The head adapted to support ``features`` already computed by the body: the
        fast path when enrolled clips are embedded once and the head is re-fit often."""
        steps = self.eval_steps if steps is None else int(steps)
        head_params = {k: v.detach() for k, v in meta_parameters(self.head).items()}
        with torch.enable_grad():
            fast = adapt(
                self.head, head_params, features, support_y,
                steps=steps, lr=self.inner_lr, first_order=True, loss_fn=self.loss_fn,
            )
        return export_module(self.head, fast, features)
