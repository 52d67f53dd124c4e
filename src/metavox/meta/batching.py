"""Run a per-task function over a meta-batch: a Python loop, or ``torch.vmap`` in chunks.

Why ``"auto"`` is not always vmap. On a GPU a per-task loop launches many small kernels
and is launch-bound; one vmapped call batches every task's convolutions into single large
kernels (2.2x learn2learn's per-task loop for second-order MAML on an H100, chunks of 8
tasks, benchmarks/RESULTS.md). On a CPU the per-task
kernels already keep the cores busy, so batching buys no parallelism, while vmap turns
each task's weights into grouped convolutions and keeps every task's activations and
double-backward buffers alive at once: on 2 cores it was ~2.3x slower than the loop with
~10x the memory. Small fully-connected models are the exception: their per-task kernels
are tiny and Python overhead dominates, so vmap wins on CPU too (the sinusoid MLP: 16 ms
against 134 ms per 25-task second-order step, one thread). ``"auto"`` therefore picks
chunked vmap on CUDA, vmap on CPU for models without convolutions, and the loop on CPU
otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor

from metavox.meta.functional import TaskAutocast, active_autocast_dtype

STRATEGIES = ("auto", "loop", "vmap")
DEFAULT_CUDA_CHUNK = 8

TaskFn = Callable[..., dict[str, Tensor]]


def resolve_strategy(
    strategy: str, device: torch.device, chunk_size: int | None, *, convolutional: bool = True
) -> tuple[str, int | None]:
    """The concrete strategy and chunk size for ``device`` and a model that is (or is not)
    ``convolutional`` (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tasks, got {chunk_size}")
    if strategy == "auto":
        if device.type == "cuda":
            return "vmap", chunk_size or DEFAULT_CUDA_CHUNK
        if not convolutional:
            return "vmap", chunk_size
        return "loop", None
    return strategy, chunk_size


def is_convolutional(model: torch.nn.Module) -> bool:
    """Whether ``model`` contains convolution layers."""
    return any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())


def map_tasks(
    fn: TaskFn,
    tensors: tuple[Tensor, ...],
    *,
    strategy: str = "loop",
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Apply ``fn`` to each task (index 0 of every tensor) and stack its dict of outputs.

    ``"vmap"`` vectorises over tasks, ``chunk_size`` tasks per call (all at once when
    ``None``) to bound the memory of the batched intermediates. Under an active
    ``torch.autocast`` it applies autocast's casts itself, which autocast does not do
    reliably inside vmap (see :class:`~metavox.meta.functional.TaskAutocast`).
    """
    num_tasks = tensors[0].shape[0]
    if strategy == "loop":
        outs = [fn(*(t[i] for t in tensors)) for i in range(num_tasks)]
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}
    if strategy != "vmap":
        raise ValueError(f"unknown strategy {strategy!r}; expected 'loop' or 'vmap'")
    vfn = torch.vmap(fn, randomness="different")
    step = chunk_size or num_tasks
    dtype = active_autocast_dtype(tensors[0].device)
    with TaskAutocast(dtype) if dtype is not None else nullcontext():
        chunks = [vfn(*(t[i : i + step] for t in tensors)) for i in range(0, num_tasks, step)]
    if len(chunks) == 1:
        return chunks[0]
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
