"""Running an algorithm over test episodes: per-episode metrics and confidence intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metavox.data.episodes import EpisodeSampler
from metavox.engine.distributed import SINGLE, Dist, gather_batches
from metavox.engine.precision import autocast
from metavox.meta import MetaAlgorithm

_BY_STEP = "accuracy_by_step"


def confidence_interval(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and 95% half-width (1.96 sigma / sqrt(n)) of per-episode values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    half = 1.96 * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else float("nan")
    return float(v.mean()), float(half)


@dataclass
class EpisodeResults:
    """Per-episode metrics of one algorithm on a run of episodes.

    ``per_task`` maps each metric (``accuracy``, ``query_loss``, ...) to one value per
    episode; ``accuracy_by_step`` is ``[episodes, steps + 1]`` when steps were recorded.
    """

    per_task: dict[str, np.ndarray]
    accuracy_by_step: np.ndarray | None = None

    def score(self, metric: str = "accuracy") -> tuple[float, float]:
        """Mean and 95% half-width of ``metric`` over the episodes."""
        return confidence_interval(self.per_task[metric])


def evaluate_episodes(
    algo: MetaAlgorithm,
    sampler: EpisodeSampler,
    episodes: int,
    *,
    meta_batch: int = 4,
    device: torch.device | str = "cpu",
    steps: int | None = None,
    record_steps: bool = False,
    progress: Any = None,
    dist: Dist = SINGLE,
    precision: str = "float32",
) -> EpisodeResults:
    """Per-episode metrics of ``algo`` (eval mode, no outer graph) on episodes
    ``0..episodes-1`` of ``sampler``.

    ``steps`` and ``record_steps`` go to every forward pass (see
    :meth:`MetaAlgorithm.forward`). With several ranks each evaluates every ``world``-th
    batch and all get the merged result, the same as one process's.
    ``precision="bfloat16"`` runs the adaptation under bfloat16 autocast; ``progress`` is
    called as ``progress(done, total)`` after each batch.
    """
    was_training = algo.training
    algo.eval()
    local: dict[int, dict[str, np.ndarray]] = {}
    batches = math.ceil(episodes / meta_batch)
    mine = range(dist.rank, batches, dist.world)
    try:
        with torch.no_grad():
            for n, b in enumerate(mine, start=1):
                batch = sampler.sample(meta_batch, b).to(device)
                with autocast(device, precision):
                    out = algo(batch, steps=steps, record_steps=record_steps)
                got = {k: v.cpu().numpy() for k, v in out.per_task.items()}
                if out.accuracy_by_step is not None:
                    got[_BY_STEP] = out.accuracy_by_step.cpu().numpy()
                local[b] = got
                if progress is not None:
                    progress(n, len(mine))
    finally:
        algo.train(was_training)
    ordered = gather_batches(local, dist)
    keys = ordered[0].keys() if ordered else ()
    merged = {k: np.concatenate([part[k] for part in ordered])[:episodes] for k in keys}
    by_step = merged.pop(_BY_STEP, None)
    return EpisodeResults(merged, by_step)
