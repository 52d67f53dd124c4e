"""What every meta-learning algorithm shares: episode batch in, meta-loss out.

An algorithm is an ``nn.Module`` holding the meta-parameters (the backbone, any learned
step sizes). Calling it on an episode batch returns a scalar whose gradient is the
meta-gradient, so one trainer loop (``loss.backward(); optimizer.step()``) serves them all.
``adapt(support_x, support_y)`` returns a :class:`Learner` for new inputs.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from metavox.data.batch import EpisodeBatch
from metavox.meta.batching import is_convolutional, map_tasks, resolve_strategy
from metavox.meta.functional import TaskBatchNorm, has_batch_norm
from metavox.meta.inner import LossFn, default_loss


@dataclass
class MetaOutput:
    """The meta-loss (differentiable), its metrics averaged over tasks, and per task."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    per_task: dict[str, Tensor] = field(default_factory=dict)


def is_classification(y: Tensor) -> bool:
    """Integer targets mean classification; floating targets mean regression."""
    return not torch.is_floating_point(y)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of rows whose arg-max equals the label (in float32 at least, also when the
    logits are bfloat16 under autocast)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return (logits.argmax(dim=-1) == y).to(dtype).mean()


class MetaAlgorithm(nn.Module):
    """Base class: subclasses define :meth:`task_objective` and :meth:`adapt`.

    ``strategy`` is ``"auto"`` (loop on CPU, chunked vmap on CUDA), ``"loop"`` or
    ``"vmap"``; ``chunk_size`` bounds how many tasks one vmapped call holds.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss_fn: LossFn | None = None,
        strategy: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_fn: LossFn = loss_fn or default_loss
        resolve_strategy(strategy, torch.device("cpu"), chunk_size)  # validate early
        self.strategy = strategy
        self.chunk_size = chunk_size
        self._batch_norm = has_batch_norm(model)
        self._convolutional = is_convolutional(model)
        self._ways: int | None = None
        #: in eval mode, also report ``accuracy@s`` after every inner step s (where the
        #: algorithm has an inner loop): the accuracy-against-steps curve in one pass
        self.record_steps = False
        #: recompute inner steps in the outer backward instead of storing them (set by
        #: algorithms with a differentiable inner loop; needs the per-task loop)
        self.inner_checkpoint = False
        #: in training, take each task's (each vmapped chunk's) meta-gradient as soon as
        #: it is computed, so only one task's graph is alive at a time; ``loss.backward()``
        #: then delivers the stored gradient (see :class:`PrecomputedGradient`)
        self.task_backward = True

    # -- to implement -------------------------------------------------------------
    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> dict[str, Tensor]:
        """One task's scalar tensors; ``"loss"`` is the task's meta-loss."""
        raise NotImplementedError

    def adapt(self, support_x: Tensor, support_y: Tensor, **kwargs) -> Learner:
        """Adapt to one task's support set (``[N*K, ...]``) and return a learner."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------
    def start_recording(self, metrics: dict[str, Tensor], classify: bool) -> bool:
        """Whether to record ``accuracy@s`` for this task (eval mode, ``record_steps``,
        classification); if so, step 0 is the accuracy before adaptation."""
        record = self.record_steps and not self.training and classify
        if record and "accuracy_before" in metrics:
            metrics["accuracy@0"] = metrics["accuracy_before"]
        return record

    @staticmethod
    def finish(
        metrics: dict[str, Tensor],
        objective: Tensor,
        query_loss: Tensor,
        logits: Tensor,
        query_y: Tensor,
        *,
        classify: bool,
        record_step: int | None,
    ) -> dict[str, Tensor]:
        """Add the task's objective, final query loss and accuracy (also as
        ``accuracy@record_step`` when recording) to ``metrics``."""
        metrics["loss"] = objective
        metrics["query_loss"] = query_loss.detach()
        if classify:
            metrics["accuracy"] = accuracy(logits.detach(), query_y)
            if record_step is not None:
                metrics[f"accuracy@{record_step}"] = metrics["accuracy"]
        return metrics

    @staticmethod
    def follow(
        trajectory,
        start: dict[str, Tensor],
        *,
        record_until: int,
        query_logits,
        query_y: Tensor,
        metrics: dict[str, Tensor],
    ) -> dict[str, Tensor]:
        """Run an inner-loop trajectory to its end and return the last parameters,
        recording the query accuracy after each step ``s < record_until``."""
        fast = start
        for s, fast in enumerate(trajectory, start=1):
            if s < record_until:
                with torch.no_grad():
                    metrics[f"accuracy@{s}"] = accuracy(query_logits(fast), query_y)
        return fast

    def norm_context(self, strategy: str = "vmap"):
        """Explicit per-task batch normalisation, needed under vmap only.

        Outside vmap PyTorch's native kernel (batch statistics, running buffers hidden)
        gives the same meta-gradient to ~1e-13 in float64 and is ~20% faster, so the loop
        strategy keeps it.
        """
        if self._batch_norm and strategy == "vmap":
            return TaskBatchNorm()
        return nullcontext()

    def forward(
        self,
        batch: EpisodeBatch | tuple[Tensor, Tensor, Tensor, Tensor],
    ) -> MetaOutput:
        """Meta-loss of a batch of tasks: the mean of the per-task objectives."""
        if isinstance(batch, EpisodeBatch):
            tensors = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        else:
            tensors = tuple(batch)
            if len(tensors) != 4:
                raise ValueError(
                    "expected an EpisodeBatch or (support_x, support_y, query_x, query_y)"
                )
        sx, sy, qx, qy = tensors
        if sy.dim() < 2 or len({t.shape[0] for t in tensors}) != 1:
            raise ValueError(
                "episode tensors need one leading task dimension T: got support_x "
                f"{tuple(sx.shape)}, support_y {tuple(sy.shape)}, query_x {tuple(qx.shape)}, "
                f"query_y {tuple(qy.shape)}"
            )
        if is_classification(sy):
            self._ways = int(torch.maximum(sy.max(), qy.max()).item()) + 1
        strategy, chunk = resolve_strategy(self.strategy, sx.device, self.chunk_size,
                                           convolutional=self._convolutional)
        if self.inner_checkpoint and strategy == "vmap" and torch.is_grad_enabled():
            if self.strategy != "auto":
                raise ValueError("inner_checkpoint does not compose with torch.vmap: use "
                                 "strategy='loop' or 'auto'")
            strategy, chunk = "loop", None
        params = [p for p in self.parameters() if p.requires_grad]
        if self.task_backward and self.training and torch.is_grad_enabled() and params:
            return self._forward_task_backward(tensors, strategy, chunk, params)
        with self.norm_context(strategy):
            per_task = map_tasks(
                self.task_objective, tensors, strategy=strategy, chunk_size=chunk
            )
        loss = per_task["loss"].mean()
        metrics = {k: float(v.detach().mean()) for k, v in per_task.items()}
        detached = {k: v.detach() for k, v in per_task.items()}
        return MetaOutput(loss=loss, metrics=metrics, per_task=detached)


    def _forward_task_backward(self, tensors, strategy: str, chunk: int | None,
                               params: list[nn.Parameter]) -> MetaOutput:
        """:meth:`forward` with the backward taken task by task (chunk by chunk under
        vmap): the same meta-gradient, with the memory of one task's graph instead of
        the whole meta-batch's (what learn2learn's examples get by calling
        ``backward()`` inside their task loop)."""
        num_tasks = tensors[0].shape[0]
        step = 1 if strategy == "loop" else (chunk or num_tasks)
        grads: list[Tensor | None] = [None] * len(params)
        parts: list[dict[str, Tensor]] = []
        for i in range(0, num_tasks, step):
            piece = tuple(t[i : i + step] for t in tensors)
            with self.norm_context(strategy):
                per = map_tasks(self.task_objective, piece, strategy=strategy,
                                chunk_size=None)
            part = per["loss"].sum() / num_tasks
            got = _gradients(part, params, checkpointed=self.inner_checkpoint)
            grads = [g if a is None else (a if g is None else a + g)
                     for a, g in zip(grads, got, strict=True)]
            parts.append({k: v.detach() for k, v in per.items()})
        per_task = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        value = per_task["loss"].mean()
        loss = PrecomputedGradient.apply(value, params, grads, *params)
        metrics = {k: float(v.mean()) for k, v in per_task.items()}
        return MetaOutput(loss=loss, metrics=metrics, per_task=per_task)


def _gradients(loss: Tensor, params: list[nn.Parameter], *,
               checkpointed: bool) -> list[Tensor | None]:
    """``d loss / d params`` (None where unused), without touching ``.grad``.

    The reentrant activation checkpoint (inner-loop checkpointing) only supports
    ``backward()``, so there the gradient is taken into ``.grad`` and moved out."""
    if not loss.requires_grad:
        return [None] * len(params)
    if not checkpointed:
        return list(torch.autograd.grad(loss, params, allow_unused=True))
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        loss.backward()
        return [p.grad for p in params]
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g


class PrecomputedGradient(torch.autograd.Function):
    """A scalar whose gradient with respect to ``params`` is already known: ``backward``
    returns the stored gradients times the incoming gradient. It lets an algorithm take
    its meta-gradient task by task and still hand the caller an ordinary loss for
    ``loss.backward()`` (once: it cannot be differentiated a second time)."""

    @staticmethod
    def forward(ctx, value: Tensor, params, grads, *inputs: Tensor) -> Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        out = [None if g is None else grad_output * g for g in ctx.grads]
        return (None, None, None, *out)


class Learner:
    """A model adapted to one task: classifies (or regresses) new inputs.

    It wraps a plain ``nn.Module`` in eval mode. For models with BatchNorm, its running
    statistics are the support set's statistics under the adapted weights, so single
    inputs are classified the same way as in a batch (no transduction at deployment).
    """

    def __init__(self, module: nn.Module, classes: list[str] | None = None) -> None:
        self.module = module.eval()
        self.classes = classes

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

    def to_module(self) -> nn.Module:
        """The adapted network as a plain ``nn.Module`` (for export or serving)."""
        return self.module


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
