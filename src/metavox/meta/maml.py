"""MAML (Finn et al. 2017), first-order MAML, Meta-SGD (Li et al. 2017) and MAML++
(Antoniou et al. 2019) as one algorithm with options.

The meta-loss of a task is the query loss after ``steps`` inner SGD steps on the support
set. The options change only where the inner step sizes come from and which query losses
are weighted in:

- ``lr="fixed"``: one scalar step size (MAML);
- ``lr="per_parameter"``: a learned tensor per parameter, same shape (Meta-SGD);
- ``lr="per_step"``: a learned scalar per parameter tensor and per step (MAML++ LSLR);
- ``multi_step_loss``: the weighted query loss after every step, the weights annealed
  towards the last step over ``msl_iterations`` (MAML++ MSL);
- ``per_step_bn``: BatchNorm weights and biases learned separately for each step and kept
  out of the inner update (MAML++ BNWB); statistics are per task and per step by
  construction, since each step normalises with its own batch;
- ``first_order_iterations``: first-order gradients for the first iterations, then
  second-order (MAML++ derivative-order annealing).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metavox.meta.base import Learner, MetaAlgorithm, accuracy, export_module, is_classification
from metavox.meta.functional import (
    Params,
    batch_norm_param_names,
    forward,
    functional_buffers,
    meta_parameters,
)
from metavox.meta.inner import (
    LossFn,
    StepSize,
    adapt,
    constant_lr,
    inner_loop,
    per_parameter_lr,
    per_step_lr,
)

LR_MODES = ("fixed", "per_parameter", "per_step")


def _key(name: str) -> str:
    """A parameter name usable as a ``ParameterDict`` key (no dots)."""
    return name.replace(".", "__")


def msl_weights(steps: int, iteration: int, anneal_iterations: int) -> list[float]:
    """MAML++ multi-step loss weights: uniform at first, moving to the last step.

    Non-final weights decay linearly from 1/S to a floor of 0.03/S over
    ``anneal_iterations``; the final weight takes up the rest, so they always sum to 1.
    """
    if steps <= 1:
        return [1.0]
    decay = 1.0 / steps / max(anneal_iterations, 1)
    floor = 0.03 / steps
    non_final = max(1.0 / steps - iteration * decay, floor)
    return [non_final] * (steps - 1) + [1.0 - (steps - 1) * non_final]


class MAML(MetaAlgorithm):
    """Model-agnostic meta-learning on any ``nn.Module``.

    Args:
        model: the network; its outputs are logits over the task's ways (classification)
            or predictions (regression, with float targets).
        inner_lr: the inner step size (the initial value when learned).
        steps: inner steps in meta-training (``adaptation_steps`` in learn2learn).
        eval_steps: inner steps when not training and in :meth:`adapt` (default ``steps``).
        first_order: drop second-order terms (FOMAML).
        lr: ``"fixed"``, ``"per_parameter"`` (Meta-SGD) or ``"per_step"`` (MAML++ LSLR).
        multi_step_loss, msl_iterations, per_step_bn, first_order_iterations: MAML++.
        track_before: also report query loss and accuracy before adaptation.
        inner_checkpoint: recompute each inner step in the outer backward instead of
            storing it, so second-order memory does not grow with ``steps`` (about one
            more support forward and backward per step; runs tasks in a loop).
        strategy, chunk_size: task batching (see :mod:`metavox.meta.batching`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float = 0.4,
        steps: int = 1,
        eval_steps: int | None = None,
        first_order: bool = False,
        lr: str = "fixed",
        multi_step_loss: bool = False,
        msl_iterations: int = 1000,
        per_step_bn: bool = False,
        first_order_iterations: int = 0,
        track_before: bool = True,
        loss_fn: LossFn | None = None,
        strategy: str = "auto",
        chunk_size: int | None = None,
        inner_checkpoint: bool = False,
    ) -> None:
        super().__init__(model, loss_fn=loss_fn, strategy=strategy, chunk_size=chunk_size)
        self.inner_checkpoint = bool(inner_checkpoint)
        if lr not in LR_MODES:
            raise ValueError(f"lr must be one of {LR_MODES}, got {lr!r}")
        if steps < 1 or (eval_steps is not None and eval_steps < 0):
            raise ValueError(f"steps must be >= 1 and eval_steps >= 0, got {steps}, {eval_steps}")
        self.inner_lr = float(inner_lr)
        self.steps = int(steps)
        self.eval_steps = int(eval_steps) if eval_steps is not None else self.steps
        self.first_order = bool(first_order)
        self.lr_mode = lr
        self.multi_step_loss = bool(multi_step_loss)
        self.msl_iterations = int(msl_iterations)
        self.first_order_iterations = int(first_order_iterations)
        self.track_before = bool(track_before)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

        self.bn_names = batch_norm_param_names(model) if per_step_bn else []
        self.bn_steps = nn.ParameterDict()
        table_len = max(self.steps, self.eval_steps) + 1
        for name in self.bn_names:
            p = dict(model.named_parameters())[name]
            table = p.detach().unsqueeze(0).repeat(table_len, *([1] * p.dim()))
            self.bn_steps[_key(name)] = nn.Parameter(table)

        self.lrs = nn.ParameterDict()
        for name, p in meta_parameters(model).items():
            if name in self.bn_names:
                continue
            if lr == "per_parameter":
                self.lrs[_key(name)] = nn.Parameter(torch.full_like(p, self.inner_lr))
            elif lr == "per_step":
                init = torch.full((table_len - 1,), self.inner_lr, dtype=p.dtype, device=p.device)
                self.lrs[_key(name)] = nn.Parameter(init)

    # -- pieces -------------------------------------------------------------------
    def set_iteration(self, iteration: int) -> None:
        """Tell the schedules (MSL annealing, derivative-order annealing) the iteration."""
        self.iteration.fill_(int(iteration))

    def _step_size(self) -> StepSize:
        if self.lr_mode == "fixed":
            return constant_lr(self.inner_lr)
        table = {name: self.lrs[_key(name)] for name in self._adapt_names()}
        return per_parameter_lr(table) if self.lr_mode == "per_parameter" else per_step_lr(table)

    def _adapt_names(self) -> list[str]:
        return [n for n in meta_parameters(self.model) if n not in self.bn_names]

    def _overrides(self, step: int) -> Params:
        """Per-step BatchNorm affine parameters for forward pass number ``step``."""
        out = {}
        for name in self.bn_names:
            table = self.bn_steps[_key(name)]
            out[name] = table[min(step, table.shape[0] - 1)]
        return out

    def _use_first_order(self) -> bool:
        return self.first_order or int(self.iteration) < self.first_order_iterations

    def _num_steps(self) -> int:
        return self.steps if self.training else self.eval_steps

    def _query_terms(self, fast: Params, step: int, qx: Tensor, qy: Tensor, buffers):
        out = forward(self.model, {**fast, **self._overrides(step)}, qx, buffers)
        return self.loss_fn(out, qy), out

    # -- the objective --------------------------------------------------------------
    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> dict[str, Tensor]:
        params = meta_parameters(self.model)
        buffers = functional_buffers(self.model)
        steps = self._num_steps()
        metrics: dict[str, Tensor] = {}
        classify = is_classification(query_y)
        if self.track_before:
            with torch.no_grad():
                loss0, out0 = self._query_terms(params, 0, query_x, query_y, buffers)
            metrics["loss_before"] = loss0
            if classify:
                metrics["accuracy_before"] = accuracy(out0, query_y)

        use_msl = self.multi_step_loss and self.training
        weights = (
            msl_weights(steps, int(self.iteration), self.msl_iterations) if use_msl else None
        )
        trajectory = inner_loop(
            self.model,
            params,
            support_x,
            support_y,
            steps=steps,
            lr=self._step_size(),
            first_order=self._use_first_order(),
            loss_fn=self.loss_fn,
            adapt_names=self._adapt_names(),
            overrides=self._overrides if self.bn_names else None,
            buffers=buffers,
            checkpoint=self.inner_checkpoint,
        )
        if steps == 0:
            loss, out = self._query_terms(params, 0, query_x, query_y, buffers)
            objective = loss
        record = self.start_recording(metrics, classify)
        for s, fast in enumerate(trajectory, start=1):
            if record and s < steps:
                with torch.no_grad():
                    _, out_s = self._query_terms(fast, s, query_x, query_y, buffers)
                metrics[f"accuracy@{s}"] = accuracy(out_s, query_y)
            if weights is None and s < steps:
                continue
            loss, out = self._query_terms(fast, s, query_x, query_y, buffers)
            term = loss if weights is None else weights[s - 1] * loss
            objective = term if s == 1 or weights is None else objective + term
        return self.finish(metrics, objective, loss, out, query_y, classify=classify,
                           record_step=steps if record else None)

    # -- deployment ---------------------------------------------------------------------
    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        *,
        steps: int | None = None,
        classes: list[str] | None = None,
    ) -> Learner:
        """Fine-tune a copy of the model on one support set and return it as a learner."""
        steps = self.eval_steps if steps is None else int(steps)
        params = {k: v.detach() for k, v in meta_parameters(self.model).items()}
        with torch.enable_grad():
            fast = adapt(self.model, params, support_x, support_y, steps=steps,
                         lr=self._step_size(), first_order=True, loss_fn=self.loss_fn,
                         adapt_names=self._adapt_names(),
                         overrides=self._overrides if self.bn_names else None)
        final = {k: v.detach() for k, v in {**fast, **self._overrides(steps)}.items()}
        return Learner(export_module(self.model, final, support_x), classes)


class MetaSGD(MAML):
    """Meta-SGD: MAML with a learned step size for every parameter entry."""

    def __init__(self, model: nn.Module, **kwargs) -> None:
        kwargs.setdefault("lr", "per_parameter")
        super().__init__(model, **kwargs)


class MAMLPlusPlus(MAML):
    """MAML++: per-step per-layer learned step sizes, annealed multi-step loss,
    per-step BatchNorm weights and derivative-order annealing."""

    def __init__(self, model: nn.Module, **kwargs) -> None:
        kwargs.setdefault("lr", "per_step")
        kwargs.setdefault("multi_step_loss", True)
        kwargs.setdefault("per_step_bn", True)
        super().__init__(model, **kwargs)
