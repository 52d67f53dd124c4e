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


# What torch.autocast runs in low precision (matrix products, convolutions) and what it
# keeps in float32 (losses, softmax, distances), for the ops our models and losses use.
_LOW_PRECISION_OPS = frozenset({
    F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
    F.conv_transpose3d, F.linear, torch.matmul, torch.mm, torch.bmm, torch.addmm,
    torch.baddbmm, torch.mv, Tensor.matmul, Tensor.__matmul__, Tensor.__rmatmul__,
    Tensor.mm, Tensor.bmm,
})
_FLOAT32_OPS = frozenset({
    F.cross_entropy, F.nll_loss, F.log_softmax, F.softmax, F.mse_loss, F.l1_loss,
    F.smooth_l1_loss, F.binary_cross_entropy_with_logits, torch.logsumexp, torch.cdist,
    Tensor.log_softmax, Tensor.softmax, Tensor.logsumexp,
})


class TaskAutocast(TorchFunctionMode):
    """``torch.autocast`` for code running under ``torch.vmap``, where autocast itself
    does not apply.

    Measured on torch 2.13 (CPU): under an active autocast context, a convolution inside
    ``vmap`` ran in bfloat16 for some calls (a MAML task's first forward) and in float32
    for others (after an inner step), and a plain vmapped ``functional_call`` stayed
    float32 altogether; on CUDA (torch 2.11) the same inconsistency made a bfloat16
    activation meet a float32 bias, and the convolution failed. While this mode is
    active, matrix products and convolutions get their floating-point arguments cast to
    ``dtype`` and losses, softmax and distances get half-precision arguments cast to
    float32: autocast's own policy, made explicit. The casts are differentiable, so
    gradients reach the float32 parameters as under autocast.
    """

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func in _LOW_PRECISION_OPS:
            return func(*_cast(args, self.dtype), **_cast(kwargs, self.dtype))
        if func in _FLOAT32_OPS:
            return func(*_cast(args, torch.float32, only_half=True),
                        **_cast(kwargs, torch.float32, only_half=True))
        return func(*args, **kwargs)


def _cast(obj, dtype: torch.dtype, *, only_half: bool = False):
    """``obj`` (a tensor, or a tuple/list/dict of them) with floating tensors in ``dtype``;
    float64 is left alone, as autocast leaves it."""
    if isinstance(obj, Tensor):
        cast = (obj.is_floating_point() and obj.dtype not in (dtype, torch.float64)
                and (not only_half or obj.dtype in (torch.bfloat16, torch.float16)))
        return obj.to(dtype) if cast else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast(o, dtype, only_half=only_half) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, dtype, only_half=only_half) for k, v in obj.items()}
    return obj


def active_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype of the autocast context active for ``device``'s type, or None."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


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
