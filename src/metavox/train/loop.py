"""Meta-training: one loop for every algorithm, with validation, checkpoints and logs.

Iteration ``i`` always trains on episode batch ``i`` of the training sampler (episodes are
a pure function of seed and index), and the checkpoint holds the parameters, optimiser,
schedule and RNG states, so a run interrupted and resumed ends with exactly the same
parameters as one that was not.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from metavox import __version__
from metavox.data.episodes import EpisodeSampler
from metavox.meta import MetaAlgorithm
from metavox.train.checkpoint import (
    Checkpoint,
    load_checkpoint,
    optimizer_state,
    restore_optimizer,
    save_checkpoint,
)
from metavox.train.config import RunConfig
from metavox.train.distributed import (
    SINGLE,
    Dist,
    all_reduce_gradients,
    average_metrics,
    broadcast_state,
    gather_batches,
)
from metavox.train.setup import autocast

LOG_FIELDS = ["iteration", "lr", "loss", "accuracy", "accuracy_before", "grad_norm",
              "val_accuracy", "val_ci95", "seconds"]


def confidence_interval(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and 95% half-width (1.96 sigma / sqrt(n)) of per-episode values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    half = 1.96 * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else float("nan")
    return float(v.mean()), float(half)


def warmup_cosine(iterations: int, warmup: int, min_ratio: float):
    """Learning-rate factor: linear warm-up, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(iterations - warmup, 1)
        t = min(max(step - warmup, 0) / span, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def evaluate_episodes(
    algo: MetaAlgorithm,
    sampler: EpisodeSampler,
    episodes: int,
    *,
    meta_batch: int = 4,
    device: torch.device | str = "cpu",
    progress: Any = None,
    dist: Dist = SINGLE,
    precision: str = "float32",
) -> dict[str, np.ndarray]:
    """Per-episode metrics of ``algo`` (eval mode, no outer graph) on episodes
    ``0..episodes-1`` of ``sampler``. With several ranks each evaluates every
    ``world``-th batch and all get the merged result, the same as one process's.
    ``precision="bfloat16"`` runs the adaptation under bfloat16 autocast."""
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
                    out = algo(batch)
                local[b] = {k: v.cpu().numpy() for k, v in out.per_task.items()}
                if progress is not None:
                    progress(n, len(mine))
    finally:
        algo.train(was_training)
    ordered = gather_batches(local, dist)
    keys = ordered[0].keys() if ordered else ()
    return {k: np.concatenate([part[k] for part in ordered])[:episodes] for k in keys}


@dataclass
class TrainState:
    """Where training stands (saved in every checkpoint)."""

    iteration: int = 0
    best_val: float = -1.0
    best_iteration: int = -1
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Meta-trains ``algo`` on ``train`` episodes, validating on ``val`` episodes.

    Writes into ``out``: ``latest.safetensors`` and ``best.safetensors`` (by validation
    accuracy), ``metrics.csv``, TensorBoard events under ``tb/`` when TensorBoard is
    installed, and ``config.toml``.
    """

    def __init__(
        self,
        cfg: RunConfig,
        algo: MetaAlgorithm,
        train: EpisodeSampler,
        val: EpisodeSampler | None,
        *,
        out: str | Path,
        meta: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
        dist: Dist = SINGLE,
    ) -> None:
        self.cfg = cfg
        self.dist = dist
        self.algo = algo.to(device)
        broadcast_state(self.algo, dist)
        self.train_sampler, self.val_sampler = train, val
        self.out = Path(out)
        self.meta = dict(meta or {})
        self.device = torch.device(device)
        self.show_progress = progress
        o = cfg.optim
        self.optimizer = torch.optim.Adam(algo.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(o.iterations, o.warmup, o.min_lr_ratio)
        )
        self.state = TrainState()

    # -- checkpoints ----------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        """The full training state as a checkpoint."""
        tensors = {f"algo/{k}": v for k, v in self.algo.state_dict().items()}
        opt_tensors, opt_plain = optimizer_state(self.optimizer)
        tensors.update({f"optim/{k}": v for k, v in opt_tensors.items()})
        tensors["rng/torch"] = torch.get_rng_state()
        meta = {
            **self.meta,
            "metavox_version": __version__,
            "config": self.cfg.to_dict(),
            "frontend": self.cfg.frontend_config().to_dict(),
            "algorithm": self.cfg.algorithm.name,
            "model": {"name": self.cfg.model.name, "options": self.cfg.model.options},
            "optimizer": opt_plain,
            "schedule": self.schedule.state_dict(),
            "state": {
                "iteration": self.state.iteration,
                "best_val": self.state.best_val,
                "best_iteration": self.state.best_iteration,
            },
        }
        return Checkpoint(tensors, meta)

    def save(self, name: str) -> Path:
        """Write a checkpoint (rank 0 only: the ranks hold the same state)."""
        path = self.out / name
        return save_checkpoint(path, self.checkpoint()) if self.dist.main else path

    def resume(self, path: str | Path | None = None) -> int:
        """Load the training state from ``path`` (default ``out/latest.safetensors``)."""
        ckpt = load_checkpoint(path or self.out / "latest.safetensors")
        self.algo.load_state_dict(ckpt.section("algo"))
        restore_optimizer(self.optimizer, ckpt.section("optim"), ckpt.meta["optimizer"])
        self.schedule.load_state_dict(ckpt.meta["schedule"])
        torch.set_rng_state(ckpt.tensors["rng/torch"])
        st = ckpt.meta["state"]
        self.state.iteration = int(st["iteration"])
        self.state.best_val = float(st["best_val"])
        self.state.best_iteration = int(st["best_iteration"])
        return self.state.iteration

    # -- logging ------------------------------------------------------------------------
    def _open_logs(self, start: int):
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "metrics.csv"
        rows = []
        if start > 0 and path.is_file():  # keep what happened before the resume point
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= start]
        f = path.open("w", newline="")
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(log_dir=str(self.out / "tb"), purge_step=start + 1)
        except ImportError:
            tb = None
        return f, writer, tb

    def validate(self) -> tuple[float, float]:
        """Mean validation accuracy and its 95% interval over the fixed validation episodes."""
        if self.val_sampler is None:
            return float("nan"), float("nan")
        v = self.cfg.validation
        per = evaluate_episodes(self.algo, self.val_sampler, v.episodes,
                                meta_batch=self.cfg.episodes.meta_batch, device=self.device,
                                dist=self.dist, precision=self.cfg.precision)
        key = "accuracy" if "accuracy" in per else "query_loss"
        return confidence_interval(per[key])

    # -- the loop -------------------------------------------------------------------------
    def fit(self, *, resume: bool = False, stop_after: int | None = None) -> TrainState:
        """Train to ``optim.iterations`` (from the last checkpoint when ``resume``).

        ``stop_after`` ends early after that many iterations of this call (tests use it to
        simulate an interruption).
        """
        cfg = self.cfg
        d = self.dist
        start = self.resume() if resume else 0
        total = cfg.optim.iterations
        if resume and d.main:
            print(f"resumed from iteration {start} of {total} ({self.out})", file=sys.stderr)
        f, writer, tb = self._open_logs(start) if d.main else (None, None, None)
        dataset = self.train_sampler.dataset(cfg.episodes.meta_batch, max(total - start, 0),
                                             start=start, rank=d.rank, world=d.world)
        # its own generator: creating the loader must not consume the global torch RNG,
        # or a resumed run would diverge from an uninterrupted one
        loader = DataLoader(dataset, batch_size=None, shuffle=False,
                            num_workers=cfg.data.workers,
                            generator=torch.Generator().manual_seed(cfg.seed))
        bar = None
        if self.show_progress and d.main:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=start, desc=f"meta-train {cfg.algorithm.name}",
                       unit="it", dynamic_ncols=True)
        self.algo.train()
        t0 = time.perf_counter()
        done = 0
        try:
            for i, batch in enumerate(loader, start=start):
                if hasattr(self.algo, "set_iteration"):
                    self.algo.set_iteration(i)
                with autocast(self.device, cfg.precision):
                    out = self.algo(batch.to(self.device))
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                all_reduce_gradients(self.algo.parameters(), d)
                metrics = average_metrics(out.metrics, d)
                clip = cfg.optim.clip_norm
                params = [p for p in self.algo.parameters() if p.grad is not None]
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    params, clip if clip > 0 else float("inf")))
                self.optimizer.step()
                lr = self.schedule.get_last_lr()[0]
                self.schedule.step()
                self.state.iteration = i + 1
                row: dict[str, Any] = {
                    "iteration": i + 1, "lr": lr, "loss": metrics["loss"],
                    "accuracy": metrics.get("accuracy", ""),
                    "accuracy_before": metrics.get("accuracy_before", ""),
                    "grad_norm": grad_norm, "val_accuracy": "", "val_ci95": "",
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                last = i + 1 == total
                if (i + 1) % cfg.validation.every == 0 or last:
                    val, ci = self.validate()
                    row["val_accuracy"], row["val_ci95"] = val, ci
                    if not math.isnan(val) and val > self.state.best_val:
                        self.state.best_val, self.state.best_iteration = val, i + 1
                        self.save("best.safetensors")
                if writer is not None:
                    writer.writerow(row)
                    f.flush()
                if tb is not None:
                    for k in ("loss", "accuracy", "accuracy_before", "lr", "grad_norm",
                              "val_accuracy"):
                        if row[k] != "":
                            tb.add_scalar(f"train/{k}" if k != "val_accuracy" else "val/accuracy",
                                          float(row[k]), i + 1)
                if (i + 1) % cfg.validation.checkpoint_every == 0 or last:
                    self.save("latest.safetensors")
                if bar is not None:
                    post = {"loss": f"{metrics['loss']:.3f}"}
                    if "accuracy" in metrics:
                        post["acc"] = f"{metrics['accuracy']:.3f}"
                    if self.state.best_val >= 0:
                        post["val"] = f"{self.state.best_val:.3f}"
                    bar.set_postfix(post)
                    bar.update(1)
                done += 1
                if stop_after is not None and done >= stop_after:
                    break
        finally:
            if f is not None:
                f.close()
            if tb is not None:
                tb.close()
            if bar is not None:
                bar.close()
        if self.val_sampler is None and self.state.iteration == total:
            self.save("best.safetensors")  # nothing to select by: the final parameters
        return self.state
