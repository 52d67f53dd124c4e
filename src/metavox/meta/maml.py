"""MAML (Finn et al. 2017), first-order MAML, Meta-SGD (Li et al. 2017) and MAML++
(Antoniou et al. 2019) as one algorithm with options.

The meta-loss of a task is the query loss after ``steps`` inner SGD steps on the support
set. The options change only where the inner step sizes come from and which query losses
are weighted in:

- ``lr_mode="fixed"``: one scalar step size ``inner_lr`` (MAML);
- ``lr_mode="per_parameter"``: a learned tensor per parameter, same shape, starting at
  ``inner_lr`` (Meta-SGD);
- ``lr_mode="per_step"``: a learned scalar per parameter tensor and per step (MAML++ LSLR);
- ``multi_step_loss``: the weighted query loss after every step, the weights annealed
  towards the last step over ``msl_iterations`` (MAML++ MSL);
- ``per_step_bn``: BatchNorm weights and biases learned separately for each step and kept
  out of the inner update (MAML++ BNWB); statistics are per task and per step by
  construction, since each step normalises with its own batch;
- ``first_order_iterations``: first-order gradients for the first iterations, then
  second-order (MAML++ derivative-order annealing).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from metavox.meta.anil import split_body_head
from metavox.meta.base import (
    InnerLoopAlgorithm,
    StepRecorder,
    TaskSettings,
)
from metavox.meta.functional import (
    Params,
    batch_norm_param_names,
    forward,
    functional_buffers,
    meta_parameters,
)
from metavox.meta.inner import (
    StepSize,
    constant_lr,
    inner_loop,
    per_parameter_lr,
    per_step_lr,
)
from metavox.meta.protonet import prototype_head
from metavox.meta.registry import register_algorithm

LR_MODES = ("fixed", "per_parameter", "per_step")
HEAD_INITS = ("meta", "prototypes")


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


@register_algorithm("maml", description="MAML (Finn et al. 2017): second-order, all weights")
@register_algorithm("fomaml", description="first-order MAML: inner gradients detached",
                    presets={"first_order": True})
@register_algorithm("metasgd", description="Meta-SGD (Li et al. 2017): a learned step size "
                    "per weight entry", presets={"lr_mode": "per_parameter"})
@register_algorithm("mamlpp", description="MAML++ (Antoniou et al. 2019): per-step per-layer "
                    "step sizes, multi-step loss, per-step BatchNorm",
                    presets={"lr_mode": "per_step", "multi_step_loss": True,
                             "per_step_bn": True})
class MAML(InnerLoopAlgorithm):
    """Model-agnostic meta-learning on any ``nn.Module``.

    Args:
        model: the network (any ``nn.Module``).
        first_order: drop second-order terms (FOMAML).
        lr_mode: ``"fixed"``, ``"per_parameter"`` (Meta-SGD) or ``"per_step"`` (MAML++
            LSLR); learned step sizes start at ``inner_lr``.
        multi_step_loss, msl_iterations, per_step_bn, first_order_iterations: MAML++.
        head_init: ``"meta"`` (the head's meta-learned initialisation) or ``"prototypes"``
            (Proto-MAML: each task's head starts as the nearest-prototype rule on the body's
            support features, so adaptation starts from ProtoNet's answer; the body is
            still meta-learned through the prototypes).
        inner_checkpoint: recompute each inner step in the outer backward instead of
            storing it, so second-order memory does not grow with ``steps`` (about one
            more support forward and backward per step; runs tasks in a loop).
        common: ``inner_lr``, ``steps``, ``eval_steps``, ``track_before`` (see
            :class:`~metavox.meta.base.InnerLoopAlgorithm`) and ``loss_fn``, ``strategy``,
            ``chunk_size``, ``task_backward`` (see :class:`~metavox.meta.base.MetaAlgorithm`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        first_order: bool = False,
        lr_mode: str = "fixed",
        multi_step_loss: bool = False,
        msl_iterations: int = 1000,
        per_step_bn: bool = False,
        first_order_iterations: int = 0,
        inner_checkpoint: bool = False,
        head_init: str = "meta",
        **common: Any,
    ) -> None:
        super().__init__(model, **common)
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}")
        if head_init == "prototypes":
            body, head = split_body_head(model)
            if not isinstance(head, nn.Linear):
                raise TypeError("head_init='prototypes' needs a model whose head is an "
                                f"nn.Linear, got {type(head).__name__}")
        self.head_init = head_init
        # a prototype head is built per task, so a task may have any number of classes
        self.fixed_ways = head_init == "meta"
        if lr_mode not in LR_MODES:
            raise ValueError(f"lr_mode must be one of {LR_MODES}, got {lr_mode!r}")
        self.inner_checkpoint = bool(inner_checkpoint)
        self.first_order = bool(first_order)
        self.lr_mode = lr_mode
        self.multi_step_loss = bool(multi_step_loss)
        self.msl_iterations = int(msl_iterations)
        self.first_order_iterations = int(first_order_iterations)

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
            if lr_mode == "per_parameter":
                self.lrs[_key(name)] = nn.Parameter(torch.full_like(p, self.inner_lr))
            elif lr_mode == "per_step":
                init = torch.full((table_len - 1,), self.inner_lr, dtype=p.dtype, device=p.device)
                self.lrs[_key(name)] = nn.Parameter(init)

    # -- pieces -------------------------------------------------------------------
    def _step_size(self, rows: int | None = None) -> StepSize:
        """The inner loop's step sizes; ``rows``: for a head widened to that many rows
        (Meta-SGD's per-entry step sizes of a new row are the mean of the learned rows')."""
        if self.lr_mode == "fixed":
            return constant_lr(self.inner_lr)
        table = {name: self.lrs[_key(name)] for name in self._adapt_names()}
        if rows is not None and self.lr_mode == "per_parameter":
            table = {k: torch.cat([v, v.mean(0, keepdim=True).expand(rows - v.shape[0],
                                                                    *v.shape[1:])])
                     if k.startswith("head.") and v.shape[0] < rows else v
                     for k, v in table.items()}
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

    def _start(self, params: Params, support_x: Tensor, support_y: Tensor, ways: int,
               buffers) -> Params:
        """The parameters a task's adaptation starts from (see ``head_init``)."""
        if self.head_init == "meta":
            return params
        body = {k[5:]: v for k, v in params.items() if k.startswith("body.")}
        body_buffers = {k[5:]: v for k, v in buffers.items() if k.startswith("body.")}
        feats = forward(self.model.body, body, support_x, body_buffers).flatten(1)
        weight, bias = prototype_head(feats, support_y, ways)
        return {**params, "head.weight": weight, "head.bias": bias}

    def _query_terms(self, fast: Params, step: int, qx: Tensor, qy: Tensor, buffers):
        out = forward(self.model, {**fast, **self._overrides(step)}, qx, buffers)
        return self.loss_fn(out, qy), out

    # -- the objective --------------------------------------------------------------
    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
        settings: TaskSettings,
    ) -> dict[str, Tensor]:
        buffers = functional_buffers(self.model)
        params = self._start(meta_parameters(self.model), support_x, support_y, settings.ways,
                             buffers)
        steps = settings.steps
        metrics: dict[str, Tensor] = {}
        record = StepRecorder(settings, None, query_y)
        if self.track_before or record.enabled:
            with torch.no_grad():
                loss0, out0 = self._query_terms(params, 0, query_x, query_y, buffers)
            if self.track_before:
                self.before(metrics, out0, query_y)
            if steps > 0:
                record.add(logits=out0)

        use_msl = self.multi_step_loss and self.training
        weights = (
            msl_weights(steps, settings.iteration, self.msl_iterations) if use_msl else None
        )
        first_order = self.first_order or settings.iteration < self.first_order_iterations
        trajectory = inner_loop(
            self.model,
            params,
            support_x,
            support_y,
            steps=steps,
            lr=self._step_size(),
            first_order=first_order,
            loss_fn=self.loss_fn,
            adapt_names=self._adapt_names(),
            overrides=self._overrides if self.bn_names else None,
            buffers=buffers,
            checkpoint=self.inner_checkpoint,
        )
        if steps == 0:
            loss, out = self._query_terms(params, 0, query_x, query_y, buffers)
            objective = loss
        for s, fast in enumerate(trajectory, start=1):
            if record.enabled and s < steps:
                with torch.no_grad():
                    _, out_s = self._query_terms(fast, s, query_x, query_y, buffers)
                record.add(logits=out_s)
            if weights is None and s < steps:
                continue
            loss, out = self._query_terms(fast, s, query_x, query_y, buffers)
            term = loss if weights is None else weights[s - 1] * loss
            objective = term if s == 1 or weights is None else objective + term
        return record.finish(metrics, objective=objective, query_loss=loss, logits=out)

    # -- deployment ---------------------------------------------------------------------
    def adapted_module(self, support_x: Tensor, support_y: Tensor,
                       steps: int) -> tuple[nn.Module, dict[str, Any]]:
        """A copy of the model fine-tuned on the support set with the (learned) steps.

        With a prototype-initialised head a task may have more classes than the model's
        head has rows (more words than the meta-training tasks had): the copy then gets a
        head with a row per class, which the prototypes initialise as they would any."""
        start = None
        model, lr = self.model, self._step_size()
        if self.head_init != "meta":
            with torch.no_grad():
                params = meta_parameters(model)
                classes = int(support_y.max()) + 1
                rows = params["head.weight"].shape[0]
                if classes > rows:
                    model = copy.deepcopy(model)
                    model.head = nn.Linear(model.head.in_features, classes)
                    lr = self._step_size(rows=classes)
                    params = meta_parameters(model)
                start = self._start(params, support_x, support_y, classes,
                                    functional_buffers(model))
                # fewer classes than the head has rows: the spare rows never win (weight 0,
                # bias -1e4), so the learner keeps the model's shape and saves and loads
                start = {k: _pad_rows(v, params[k].shape[0], -1e4 if v.ndim == 1 else 0.0)
                         for k, v in start.items()}
        module = self.fine_tuned(model, support_x, support_y, steps, start=start, lr=lr,
                                 adapt_names=self._adapt_names(),
                                 overrides=self._overrides if self.bn_names else None,
                                 final=self._overrides(steps))
        return module, {}


class MetaSGD(MAML):
    """Meta-SGD: MAML with a learned step size for every parameter entry (registered as
    ``"metasgd"``)."""

    def __init__(self, model: nn.Module, **options) -> None:
        super().__init__(model, **{"lr_mode": "per_parameter", **options})


class MAMLPlusPlus(MAML):
    """MAML++: per-step per-layer learned step sizes, annealed multi-step loss,
    per-step BatchNorm weights and derivative-order annealing (registered as
    ``"mamlpp"``)."""

    def __init__(self, model: nn.Module, **options) -> None:
        super().__init__(model, **{"lr_mode": "per_step", "multi_step_loss": True,
                                   "per_step_bn": True, **options})


def _pad_rows(t: Tensor, rows: int, value: float) -> Tensor:
    """``t`` with rows of ``value`` appended up to ``rows`` (unchanged if it has them)."""
    if t.shape[0] >= rows:
        return t
    return torch.cat([t, t.new_full((rows - t.shape[0], *t.shape[1:]), value)])
