"""Distributed meta-training on ``torch.distributed``, launched with ``torchrun``.

Tasks are independent, so data parallelism over the tasks of a meta-batch is exact: each
rank runs its slice of the global meta-batch (see :class:`metavox.data.EpisodeDataset`),
the ranks' meta-gradients are averaged with one all-reduce per bucket of flattened
gradients, and every rank takes the same optimizer step from the same state, so the
meta-parameters stay identical everywhere. Why not ``DistributedDataParallel``: its
reducer fires from per-parameter autograd hooks, which a second-order meta-gradient
(gradients of ``torch.func.grad`` results) and Reptile's surrogate would have to be
shaped around; after the backward, the gradients are just tensors, and one coalesced
all-reduce of a few hundred kilobytes is all a meta-learner needs. (DDP's overlap of
communication with the backward matters for large models, not for these.)

Nothing here runs in a single process: with ``WORLD_SIZE`` unset or 1 every helper is a
no-op, so the trainer has one code path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

BUCKET_BYTES = 25 * 2**20


@dataclass(frozen=True)
class Dist:
    """This process's place in the group: ``rank`` of ``world`` (``local_rank`` on its
    node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, logs and reports (rank 0)."""
        return self.rank == 0


SINGLE = Dist()


def from_environment(device_type: str = "cpu") -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): gloo on CPU, NCCL on
    CUDA. Without torchrun (``WORLD_SIZE`` unset or 1), the single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        rank = int(os.environ["RANK"])
        # every restart round gets its own key space in the launcher's store: otherwise a
        # restarted group can read the dead group's addresses and fail to connect
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              world, is_master=rank == 0 and not agent_store)
        prefix = f"metavox/restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                store=dist.PrefixStore(prefix, store), rank=rank,
                                world_size=world)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def group_active() -> bool:
    """Whether this process has already joined a process group."""
    return dist.is_available() and dist.is_initialized()


def restarted() -> bool:
    """Whether torchrun has restarted this group after a failure (``--max-restarts``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def shutdown() -> None:
    """Leave the process group, if one was joined, all ranks together: a rank that tore
    its gloo group down while rank 0 was still writing its last files sometimes aborted at
    exit ("terminate called without an active exception", about one run in three on
    torch 2.13), so the ranks meet at a barrier first."""
    if group_active():
        dist.barrier()
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


@contextmanager
def main_first(d: Dist) -> Iterator[None]:
    """Run the body on rank 0 first, then on the others (rank 0 builds a shared cache,
    the others then find it)."""
    if not d.main:
        barrier(d)
    yield
    if d.main:
        barrier(d)


def _buckets(tensors: list[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive groups of same dtype and device, at most ``limit`` bytes each (a single
    larger tensor is its own group)."""
    group: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if group and (size + nbytes > limit or t.dtype != group[0].dtype
                      or t.device != group[0].device):
            yield group
            group, size = [], 0
        group.append(t)
        size += nbytes
    if group:
        yield group


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], d: Dist,
                         bucket_bytes: int = BUCKET_BYTES) -> None:
    """Replace every ``.grad`` by its mean over the ranks, with one all-reduce per bucket
    of flattened gradients. A parameter without a gradient counts as a zero gradient (so
    every rank reduces the same tensors in the same order)."""
    if not d.enabled:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    for group in _buckets(grads, bucket_bytes):
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat /= d.world
        offset = 0
        for g in group:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()


def average_metrics(metrics: dict[str, float], d: Dist) -> dict[str, float]:
    """The mean of each metric over the ranks (ranks hold equal numbers of tasks, so this
    is the metric over the whole meta-batch)."""
    if not d.enabled or not metrics:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, (t / d.world).tolist(), strict=True))


def gather_batches(local: dict[int, dict[str, np.ndarray]], d: Dist) -> list[dict[str, Any]]:
    """Every rank's ``{batch index: per-task arrays}`` merged and put back in batch order,
    on every rank (evaluation sharded by batch)."""
    if not d.enabled:
        return [local[b] for b in sorted(local)]
    parts: list[dict[int, dict[str, np.ndarray]] | None] = [None] * d.world
    dist.all_gather_object(parts, local)
    merged: dict[int, dict[str, np.ndarray]] = {}
    for part in parts:
        merged.update(part or {})
    return [merged[b] for b in sorted(merged)]


def broadcast_state(module: torch.nn.Module, d: Dist) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not d.enabled:
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            dist.broadcast(t, 0)
