"""What every meta-learning algorithm shares: episode batch in, meta-loss out.

An algorithm is an ``nn.Module`` holding the meta-parameters (the backbone, any learned
step sizes). Calling it on an episode batch returns a scalar whose gradient is the
meta-gradient, so one trainer loop (``loss.backward(); optimizer.step()``) serves them all.
``adapt(support_x, support_y)`` returns a :class:`Learner` for new inputs.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from metavox.data.batch import EpisodeBatch
from metavox.meta.batching import is_convolutional, map_tasks, resolve_strategy
from metavox.meta.functional import TaskBatchNorm, has_batch_norm, meta_parameters
from metavox.meta.inner import LossFn, StepSize, adapt, default_loss
from metavox.meta.learner import Learner, export_module


@dataclass(frozen=True)
class TaskSettings:
    """What one forward pass asks of every task in the batch.

    Built by :meth:`MetaAlgorithm.forward` from its arguments and the batch, and passed to
    :meth:`MetaAlgorithm.task_objective`: nothing a caller wants from one pass is stored on
    the algorithm.
    """

    #: classes per task (from the labels); None for regression
    ways: int | None
    #: inner steps to take (the algorithm's ``steps`` in training, ``eval_steps`` otherwise,
    #: unless the caller asked for another number)
    steps: int
    #: also return the query accuracy after each inner step 0..steps
    record_steps: bool = False
    #: the meta-training iteration, for schedules (MAML++ annealing)
    iteration: int = 0


@dataclass
class MetaOutput:
    """The meta-loss (differentiable), its metrics averaged over tasks, and per task.

    ``accuracy_by_step`` is ``[tasks, steps + 1]``: column ``s`` is the query accuracy
    after ``s`` inner steps (column 0 before adaptation); present when the forward pass
    was asked to ``record_steps`` and the algorithm has an inner loop.
    """

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    per_task: dict[str, Tensor] = field(default_factory=dict)
    accuracy_by_step: Tensor | None = None


def is_classification(y: Tensor) -> bool:
    """Integer targets mean classification; floating targets mean regression."""
    return not torch.is_floating_point(y)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of rows whose arg-max equals the label (in float32 at least, also when the
    logits are bfloat16 under autocast)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return (logits.argmax(dim=-1) == y).to(dtype).mean()


#: the key under which :meth:`MetaAlgorithm.task_objective` returns per-step accuracies
BY_STEP = "accuracy_by_step"


class MetaAlgorithm(nn.Module):
    """Base class: subclasses define :meth:`task_objective` and :meth:`adapt`.

    ``strategy`` is ``"auto"`` (loop on CPU, chunked vmap on CUDA), ``"loop"`` or
    ``"vmap"``; ``chunk_size`` bounds how many tasks one vmapped call holds.
    ``task_backward`` (training only) takes each task's (each vmapped chunk's)
    meta-gradient as soon as it is computed, so only one task's graph is alive at a time;
    ``loss.backward()`` then delivers the stored gradient (see
    :class:`PrecomputedGradient`). It changes memory, not the meta-gradient.
    """

    #: whether a learner's outputs are the model's own ``ways`` classes (so a task may
    #: have at most that many); ProtoNet and fine-tuning build theirs per task
    fixed_ways: bool = True
    #: recompute inner steps in the outer backward instead of storing them; an algorithm
    #: with a differentiable inner loop sets it from its own constructor (needs the loop)
    inner_checkpoint: bool = False

    def __init__(
        self,
        model: nn.Module,
        *,
        loss_fn: LossFn | None = None,
        strategy: str = "auto",
        chunk_size: int | None = None,
        task_backward: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_fn: LossFn = loss_fn or default_loss
        resolve_strategy(strategy, torch.device("cpu"), chunk_size)  # validate early
        self.strategy = strategy
        self.chunk_size = chunk_size
        self.task_backward = bool(task_backward)
        self._batch_norm = has_batch_norm(model)
        self._convolutional = is_convolutional(model)

    # -- to implement -------------------------------------------------------------
    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
        settings: TaskSettings,
    ) -> dict[str, Tensor]:
        """One task's scalar tensors; ``"loss"`` is the task's meta-loss, and
        ``BY_STEP`` (when ``settings.record_steps``) the ``[steps + 1]`` accuracies."""
        raise NotImplementedError

    def adapted_module(self, support_x: Tensor, support_y: Tensor,
                       steps: int) -> tuple[nn.Module, dict[str, Any]]:
        """The network adapted to one support set with ``steps`` inner steps, as a plain
        module of this algorithm's :attr:`learner_kind`, and the ``info`` that kind needs
        to rebuild its structure."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------
    #: inner steps in training and in eval mode / :meth:`adapt` (0: no inner loop)
    steps: int = 0
    eval_steps: int = 0
    #: the kind of module :meth:`adapted_module` returns (see ``LEARNER_KINDS``)
    learner_kind: str = "model"

    def default_steps(self) -> int:
        """Inner steps a forward pass takes unless told otherwise."""
        return self.steps if self.training else self.eval_steps

    def adapt(self, support_x: Tensor, support_y: Tensor, *, steps: int | None = None,
              classes: list[str] | None = None) -> Learner:
        """Adapt to one task's support set (``[N*K, ...]``) with ``steps`` inner steps
        (default ``eval_steps``) and return a learner named by ``classes``."""
        steps = self.eval_steps if steps is None else int(steps)
        with torch.enable_grad():
            module, info = self.adapted_module(support_x, support_y, steps)
        return Learner(module, classes, kind=self.learner_kind, info=info)

    def fine_tuned(self, module: nn.Module, support_x: Tensor, support_y: Tensor, steps: int,
                   *, lr: StepSize, adapt_names: list[str] | None = None, overrides=None,
                   start: dict[str, Tensor] | None = None,
                   final: dict[str, Tensor] | None = None) -> nn.Module:
        """A copy of ``module`` after ``steps`` of first-order SGD on the support set
        (``start``: parameters to begin from instead of the module's own, e.g. a head
        initialised from prototypes; ``final``: parameters to set after adapting, e.g.
        per-step BatchNorm weights)."""
        params = {k: v.detach() for k, v in {**meta_parameters(module), **(start or {})}.items()}
        fast = adapt(module, params, support_x, support_y, steps=steps, lr=lr,
                     first_order=True, loss_fn=self.loss_fn, adapt_names=adapt_names,
                     overrides=overrides)
        fast = {k: v.detach() for k, v in {**fast, **(final or {})}.items()}
        return export_module(module, fast, support_x)

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
        *,
        steps: int | None = None,
        record_steps: bool = False,
        iteration: int = 0,
    ) -> MetaOutput:
        """Meta-loss of a batch of tasks: the mean of the per-task objectives.

        ``steps`` overrides the number of inner steps (default: ``steps`` in training,
        ``eval_steps`` in eval mode); ``record_steps`` also returns the query accuracy
        after every step in ``MetaOutput.accuracy_by_step``; ``iteration`` is the
        meta-training iteration, for algorithms with schedules.
        """
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
        if steps is not None and steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        classify = is_classification(sy)
        ways = int(torch.maximum(sy.max(), qy.max()).item()) + 1 if classify else None
        settings = TaskSettings(ways=ways,
                                steps=self.default_steps() if steps is None else int(steps),
                                record_steps=bool(record_steps) and classify,
                                iteration=int(iteration))
        objective = functools.partial(self.task_objective, settings=settings)
        strategy, chunk = resolve_strategy(self.strategy, sx.device, self.chunk_size,
                                           convolutional=self._convolutional)
        if self.inner_checkpoint and strategy == "vmap" and torch.is_grad_enabled():
            if self.strategy != "auto":
                raise ValueError("inner_checkpoint does not compose with torch.vmap: use "
                                 "strategy='loop' or 'auto'")
            strategy, chunk = "loop", None
        params = [p for p in self.parameters() if p.requires_grad]
        if self.task_backward and self.training and torch.is_grad_enabled() and params:
            per_task, loss = self._task_backward(objective, tensors, strategy, chunk, params)
        else:
            with self.norm_context(strategy):
                per_task = map_tasks(objective, tensors, strategy=strategy, chunk_size=chunk)
            loss = per_task["loss"].mean()
        by_step = per_task.pop(BY_STEP, None)
        metrics = {k: float(v.detach().mean()) for k, v in per_task.items()}
        detached = {k: v.detach() for k, v in per_task.items()}
        return MetaOutput(loss=loss, metrics=metrics, per_task=detached,
                          accuracy_by_step=None if by_step is None else by_step.detach())

    def _task_backward(self, objective, tensors, strategy: str, chunk: int | None,
                       params: list[nn.Parameter]) -> tuple[dict[str, Tensor], Tensor]:
        """The per-task outputs and the loss of :meth:`forward`, with the backward taken
        task by task (chunk by chunk under vmap): the same meta-gradient, with the memory
        of one task's graph instead of the whole meta-batch's (what learn2learn's examples
        get by calling ``backward()`` inside their task loop)."""
        num_tasks = tensors[0].shape[0]
        step = 1 if strategy == "loop" else (chunk or num_tasks)
        grads: list[Tensor | None] = [None] * len(params)
        parts: list[dict[str, Tensor]] = []
        for i in range(0, num_tasks, step):
            piece = tuple(t[i : i + step] for t in tensors)
            with self.norm_context(strategy):
                per = map_tasks(objective, piece, strategy=strategy, chunk_size=None)
            part = per["loss"].sum() / num_tasks
            got = _gradients(part, params, checkpointed=self.inner_checkpoint)
            grads = [g if a is None else (a if g is None else a + g)
                     for a, g in zip(grads, got, strict=True)]
            parts.append({k: v.detach() for k, v in per.items()})
        per_task = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        loss = PrecomputedGradient.apply(per_task["loss"].mean(), params, grads, *params)
        return per_task, loss


class InnerLoopAlgorithm(MetaAlgorithm):
    """An algorithm that adapts by a few steps of SGD: what MAML, ANIL, Reptile share.

    Args:
        model: the network; its outputs are logits over the task's ways (classification)
            or predictions (regression, with float targets).
        inner_lr: the inner step size.
        steps: inner steps in meta-training (``adaptation_steps`` in learn2learn).
        eval_steps: inner steps in eval mode and in :meth:`adapt` (default ``steps``).
        track_before: also report query loss and accuracy before adaptation.
        common: ``loss_fn``, ``strategy``, ``chunk_size``, ``task_backward``, as in
            :class:`MetaAlgorithm` (a subclass's ``**common`` forwards the same way, and
            the algorithm registry reads the options along that chain).
    """

    def __init__(self, model: nn.Module, *, inner_lr: float = 0.4, steps: int = 5,
                 eval_steps: int | None = None, track_before: bool = True,
                 **common: Any) -> None:
        super().__init__(model, **common)
        if steps < 1 or (eval_steps is not None and eval_steps < 0):
            raise ValueError(f"steps must be >= 1 and eval_steps >= 0, got {steps}, {eval_steps}")
        self.inner_lr = float(inner_lr)
        self.steps = int(steps)
        self.eval_steps = int(eval_steps) if eval_steps is not None else self.steps
        self.track_before = bool(track_before)


    def before(self, metrics: dict[str, Tensor], logits: Tensor, query_y: Tensor) -> None:
        """Record the query loss (and accuracy) of the unadapted ``logits``."""
        metrics["loss_before"] = self.loss_fn(logits, query_y)
        if is_classification(query_y):
            metrics["accuracy_before"] = accuracy(logits, query_y)


class StepRecorder:
    """Collects the query accuracy after each inner step when a pass records steps."""

    def __init__(self, settings: TaskSettings, query_logits, query_y: Tensor) -> None:
        self.enabled = settings.record_steps
        self.steps = settings.steps
        self.query_logits, self.query_y = query_logits, query_y
        self.values: list[Tensor] = []

    def add(self, params=None, *, logits: Tensor | None = None) -> None:
        """Record the accuracy of ``params`` (or of ready ``logits``), without a graph."""
        if not self.enabled:
            return
        with torch.no_grad():
            out = self.query_logits(params) if logits is None else logits
            self.values.append(accuracy(out.detach(), self.query_y))

    def follow(self, trajectory, start: dict[str, Tensor]) -> dict[str, Tensor]:
        """Run an inner-loop trajectory to its end and return the last parameters,
        recording the accuracy before the first step and after every step but the
        last (the caller records the last from the logits it computes anyway)."""
        self.add(start)
        fast, last = start, None
        for fast in trajectory:
            if last is not None:
                self.add(last)
            last = fast
        return fast

    def finish(self, metrics: dict[str, Tensor], *, objective: Tensor, query_loss: Tensor,
               logits: Tensor) -> dict[str, Tensor]:
        """Complete a task's ``metrics``: its meta-loss ``objective``, the final query loss
        and (classification) accuracy of ``logits`` after adaptation, and, when
        recording, the ``[steps + 1]`` curve. Returns ``metrics``."""
        logits = logits.detach()
        metrics["loss"] = objective
        metrics["query_loss"] = query_loss.detach()
        if is_classification(self.query_y):
            metrics["accuracy"] = accuracy(logits, self.query_y)
        if self.enabled:
            if len(self.values) < self.steps + 1:
                self.add(logits=logits)
            metrics[BY_STEP] = torch.stack(self.values)
        return metrics


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
