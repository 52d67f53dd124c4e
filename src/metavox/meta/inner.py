"""The inner loop: a pure function from (parameters, support set) to fast parameters.

``adapt`` takes a few steps of differentiable SGD on the support loss. Because it is a
pure function of its tensor inputs it can be run per task in a loop, ``torch.vmap``-ed over
a meta-batch, or differentiated through (second-order MAML). Gradients are taken with
``torch.func.grad``, which works both inside and outside ``vmap`` and composes with the
ordinary autograd graph of the outer loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from metavox.meta.functional import Params, forward, functional_buffers

LossFn = Callable[[Tensor, Tensor], Tensor]
StepSize = float | Callable[[str, int], "Tensor | float"]
"""A scalar step size, or ``(parameter name, step) -> step size`` (tensor or float)."""


def constant_lr(lr: float) -> Callable[[str, int], float]:
    """The same step size for every parameter and step (plain MAML)."""
    return lambda name, step: lr


def per_parameter_lr(table: Mapping[str, Tensor]) -> Callable[[str, int], Tensor]:
    """A learned step-size tensor per parameter, same shape as it (Meta-SGD)."""
    return lambda name, step: table[name]


def per_step_lr(table: Mapping[str, Tensor]) -> Callable[[str, int], Tensor]:
    """A learned step size per parameter tensor and per step, ``table[name][step]``
    (MAML++ "LSLR"). Steps past the table's end reuse its last entry."""

    def lr(name: str, step: int) -> Tensor:
        t = table[name]
        return t[min(step, t.shape[0] - 1)]

    return lr


def default_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy for integer targets, mean squared error otherwise."""
    if target.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return F.cross_entropy(logits, target)
    return F.mse_loss(logits, target)


def inner_loop(
    model: nn.Module,
    params: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    *,
    steps: int = 1,
    lr: StepSize = 0.4,
    first_order: bool = False,
    loss_fn: LossFn = default_loss,
    adapt_names: Sequence[str] | None = None,
    overrides: Callable[[int], Params] | None = None,
    buffers: Mapping[str, Tensor | None] | None = None,
    checkpoint: bool = False,
) -> Iterator[Params]:
    """Yield the full parameter dict after each of ``steps`` SGD steps on the support loss.

    ``adapt_names`` selects the parameters that adapt (default: all of ``params``); the rest
    stay fixed. ``overrides(step)`` supplies parameters that replace entries of ``params``
    in the forward pass at that step without being adapted (MAML++ per-step BatchNorm
    weights). ``first_order`` detaches the inner gradients, so the outer gradient treats
    them as constants. ``checkpoint`` recomputes each step during the outer backward
    instead of storing its activations, so second-order memory stops growing with the
    number of steps (per-task loop only: it does not compose with ``torch.vmap``).
    """
    lr_fn = constant_lr(lr) if isinstance(lr, (int, float)) else lr
    if buffers is None:
        buffers = functional_buffers(model)
    names = list(params) if adapt_names is None else list(adapt_names)
    fixed = {k: v for k, v in params.items() if k not in set(names)}
    fast = {k: params[k] for k in names}

    for step in range(steps):
        extra = overrides(step) if overrides is not None else {}
        lrs = [lr_fn(k, step) for k in names]
        parts = (model, buffers, loss_fn, fixed, extra, support_x, support_y, lrs)
        if checkpoint and not first_order and torch.is_grad_enabled():
            fast = _checkpointed_step(fast, *parts)
        else:
            fast = _sgd_step(fast, *parts, first_order=first_order)
        yield {**fixed, **fast}


def _sgd_step(
    fast: Params,
    model: nn.Module,
    buffers: Mapping[str, Tensor | None],
    loss_fn: LossFn,
    fixed: Params,
    extra: Params,
    support_x: Tensor,
    support_y: Tensor,
    lrs: Sequence[Tensor | float],
    *,
    first_order: bool = False,
) -> Params:
    """One SGD step of ``fast`` on the support loss."""

    def support_loss(adapted: Params) -> Tensor:
        out = forward(model, {**fixed, **adapted, **extra}, support_x, buffers)
        return loss_fn(out, support_y)

    grads = torch.func.grad(support_loss)(fast)
    if first_order:
        grads = {k: g.detach() for k, g in grads.items()}
    return {k: fast[k] - lr * grads[k] for k, lr in zip(fast, lrs, strict=True)}


def _checkpointed_step(
    fast: Params,
    model: nn.Module,
    buffers: Mapping[str, Tensor | None],
    loss_fn: LossFn,
    fixed: Params,
    extra: Params,
    support_x: Tensor,
    support_y: Tensor,
    lrs: Sequence[Tensor | float],
) -> Params:
    """:func:`_sgd_step` under activation checkpointing: only the step's inputs are kept
    for the outer backward, which recomputes the step (support forward and inner
    gradient) when it reaches it. Every tensor the step depends on is passed explicitly,
    because the reentrant checkpoint (the kind that composes with ``torch.func.grad``)
    sends gradients only to its explicit inputs."""
    groups = [list(fast), list(fixed), list(extra)]
    sizes = [len(g) for g in groups]
    flat = [*fast.values(), *fixed.values(), *extra.values(), support_x, *lrs]

    def step(*args):
        a, b, c = sizes
        f = dict(zip(groups[0], args[:a], strict=True))
        fx = dict(zip(groups[1], args[a : a + b], strict=True))
        ex = dict(zip(groups[2], args[a + b : a + b + c], strict=True))
        sx, step_lrs = args[a + b + c], args[a + b + c + 1 :]
        new = _sgd_step(f, model, buffers, loss_fn, fx, ex, sx, support_y, step_lrs)
        return tuple(new.values())

    out = torch.utils.checkpoint.checkpoint(step, *flat, use_reentrant=True)
    return dict(zip(fast, out, strict=True))


def adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    **kwargs,
) -> Params:
    """The fast parameters after the inner loop (see :func:`inner_loop` for options)."""
    fast = dict(params)
    for fast in inner_loop(model, params, support_x, support_y, **kwargs):  # noqa: B007
        pass
    return fast
