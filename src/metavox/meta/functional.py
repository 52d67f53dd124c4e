"""Run an ordinary ``nn.Module`` as a pure function of a parameter dict.

The engine never clones or patches a model: it calls it with
``torch.func.functional_call`` and a dict of (fast) parameters. BatchNorm is the one layer
that needs care. MAML normalises each task with that task's own batch statistics
(transductive), and PyTorch's native batch-norm kernel is not safe under ``torch.vmap``
for higher-order gradients: measured against a per-task loop in float64, its second-order
meta-gradient was off by ~1e-2 absolute. :class:`TaskBatchNorm` therefore computes batch
normalisation explicitly from differentiable primitives (mean, biased variance, affine),
which vmap and double-backward handle exactly, and the running-statistics buffers are
hidden from the functional call so nothing is mutated inside a transform.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

Params = dict[str, Tensor]


def batch_norm_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x [B, C, ...]`` (channel dim 1)."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dim=dims)
    var = (x - mean.view(_channel_shape(x))).pow(2).mean(dim=dims)
    return mean, var


def _channel_shape(x: Tensor) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)


def explicit_batch_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalisation with the batch's own statistics, from plain differentiable ops.

    Half-precision input (bfloat16 under autocast) is normalised in float32 and returned in
    its own dtype, as PyTorch's kernels do: a mean rounded to bfloat16 would shift every
    normalised value."""
    dtype = x.dtype
    if dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    mean, var = batch_norm_stats(x)
    shape = _channel_shape(x)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y.to(dtype)


class TaskBatchNorm(TorchFunctionMode):
    """While active, every ``F.batch_norm`` call normalises with the batch's statistics.

    Running statistics and the ``training`` flag are ignored: inside the engine a batch is
    one task's support or query set, so this is the per-task (transductive) normalisation
    MAML uses, computed in a form that is exact under ``torch.vmap`` and double backward.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return _dispatch_batch_norm(*args, **kwargs)
        return func(*args, **kwargs)


def _dispatch_batch_norm(
    input: Tensor,  # noqa: A002 - mirrors F.batch_norm's signature
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    return explicit_batch_norm(input, weight, bias, eps)


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` contains any BatchNorm layer."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def batch_norm_param_names(model: nn.Module) -> list[str]:
    """Names of the affine parameters (weight, bias) of the model's BatchNorm layers."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, _BatchNorm):
            prefix = f"{mod_name}." if mod_name else ""
            names += [prefix + n for n, p in mod.named_parameters(recurse=False)]
    return names


def functional_buffers(model: nn.Module) -> dict[str, Tensor | None]:
    """The buffers to pass to a functional call: BatchNorm's running statistics hidden.

    Hiding them (``None``) makes BatchNorm use batch statistics in any mode and keeps it
    from updating ``num_batches_tracked`` in place, which transforms forbid.
    """
    out: dict[str, Tensor | None] = {}
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        hide = isinstance(mod, _BatchNorm)
        for name, buf in mod.named_buffers(recurse=False):
            out[prefix + name] = None if hide else buf
    return out


def forward(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    buffers: Mapping[str, Tensor | None] | None = None,
) -> Tensor:
    """``model(x)`` with ``params`` in place of the model's own parameters."""
    if buffers is None:
        buffers = functional_buffers(model)
    return functional_call(model, (dict(params), dict(buffers)), (x,))


def meta_parameters(model: nn.Module) -> Params:
    """The model's trainable parameters as a name -> tensor dict (shared, not copied)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
