"""Meta-training: one loop for every algorithm; logging, validation and checkpoints are
callbacks.

Iteration ``i`` always trains on episode batch ``i`` of the training sampler (episodes are
a pure function of seed and index), and the checkpoint holds the parameters, optimiser,
schedule and RNG states, so a run interrupted and resumed ends with exactly the same
parameters as one that was not.

The engine knows nothing of run configs, corpora or models: it takes an algorithm, a
sampler and an :class:`EngineConfig`, and whatever the caller wants recorded in every
checkpoint as ``meta``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from metavox import __version__
from metavox.data.episodes import TaskSource
from metavox.engine.checkpoint import optimizer_state, restore_optimizer
from metavox.engine.distributed import (
    SINGLE,
    Dist,
    all_reduce_gradients,
    average_metrics,
    broadcast_state,
)
from metavox.engine.precision import autocast
from metavox.meta import MetaAlgorithm
from metavox.storage import Checkpoint, load_checkpoint, save_checkpoint


def warmup_cosine(iterations: int, warmup: int, min_ratio: float):
    """Learning-rate factor: linear warm-up, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(iterations - warmup, 1)
        t = min(max(step - warmup, 0) / span, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


@dataclass(frozen=True)
class EngineConfig:
    """What the training loop itself needs: the meta-optimiser (Adam with linear warm-up
    then cosine decay, gradient clipping; ``clip_norm = 0`` disables it), the meta-batch,
    the precision, and the episode loader."""

    iterations: int
    meta_batch: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 0
    min_lr_ratio: float = 0.01
    clip_norm: float = 10.0
    precision: str = "float32"
    seed: int = 0  # seeds the episode loader's own generator
    workers: int = 0  # DataLoader workers for episodes
    #: a non-finite meta-loss or meta-gradient skips that update; this many in a row stop
    #: the run with a :class:`DivergenceError`
    max_nonfinite: int = 5


class DivergenceError(RuntimeError):
    """Training stopped on non-finite meta-losses or gradients; the message names the
    iteration and the last good checkpoint."""


@dataclass
class TrainState:
    """Where training stands (saved in every checkpoint)."""

    iteration: int = 0
    best_val: float = -1.0
    best_iteration: int = -1
    #: updates skipped because the meta-loss or its gradient was not finite (in all), and
    #: how many of the last iterations in a row were
    skipped: int = 0
    skipped_in_a_row: int = 0


@dataclass
class IterationRecord:
    """One finished iteration, handed to every callback in turn (validation adds its
    figures before the loggers see it)."""

    iteration: int  # 1-based: the number of iterations done
    lr: float
    metrics: dict[str, float]
    grad_norm: float
    seconds: float
    last: bool
    #: the update was skipped (non-finite meta-loss or gradient)
    skipped: bool = False
    val_accuracy: float | None = None
    val_ci95: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Hooks into :meth:`Trainer.fit`; every method is optional."""

    def on_fit_start(self, trainer: Trainer, start: int) -> None:
        """Before the first iteration of this call (``start`` iterations already done)."""

    def on_iteration_end(self, trainer: Trainer, record: IterationRecord) -> None:
        """After each iteration's optimiser step."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the loop, also when it stopped on an exception."""


class Trainer:
    """Meta-trains ``algo`` on episodes of ``train``; checkpoints go to ``out``.

    ``callbacks`` run in the given order after every iteration. ``meta`` is stored in
    every checkpoint beside the engine's own state (what a caller needs to rebuild the
    run). Under several ranks every rank runs the loop; only rank 0 writes.
    """

    def __init__(
        self,
        algo: MetaAlgorithm,
        train: TaskSource,
        config: EngineConfig,
        *,
        out: str | Path,
        meta: dict[str, Any] | None = None,
        callbacks: Sequence[Callback] = (),
        device: torch.device | str = "cpu",
        dist: Dist = SINGLE,
    ) -> None:
        self.config = config
        self.dist = dist
        self.algo = algo.to(device)
        broadcast_state(self.algo, dist)
        self.train_sampler = train
        self.out = Path(out)
        self.meta = dict(meta or {})
        self.callbacks = list(callbacks)
        self.device = torch.device(device)
        c = config
        self.optimizer = torch.optim.Adam(algo.parameters(), lr=c.lr,
                                          weight_decay=c.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(c.iterations, c.warmup, c.min_lr_ratio)
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
            "optimizer": opt_plain,
            "schedule": self.schedule.state_dict(),
            "state": {
                "iteration": self.state.iteration,
                "best_val": self.state.best_val,
                "best_iteration": self.state.best_iteration,
                "skipped": self.state.skipped,
                "skipped_in_a_row": self.state.skipped_in_a_row,
            },
        }
        return Checkpoint(tensors, meta)

    def save(self, name: str) -> Path:
        """Write a checkpoint (rank 0 only: the ranks hold the same state); parameters that
        are not finite are never written."""
        path = self.out / name
        bad = [n for n, p in self.algo.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise DivergenceError(f"not writing {path}: parameters {bad[:3]} are not finite "
                                  f"at iteration {self.state.iteration}")
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
        self.state.skipped = int(st.get("skipped", 0))
        self.state.skipped_in_a_row = int(st.get("skipped_in_a_row", 0))
        return self.state.iteration

    def record_validation(self, iteration: int, value: float) -> bool:
        """Note a validation score; a new best is saved as ``best.safetensors``."""
        if math.isnan(value) or value <= self.state.best_val:
            return False
        self.state.best_val, self.state.best_iteration = value, iteration
        self.save("best.safetensors")
        return True

    # -- the loop -------------------------------------------------------------------------
    def fit(self, *, resume: bool = False, stop_after: int | None = None) -> TrainState:
        """Train to ``config.iterations`` (from the last checkpoint when ``resume``).

        ``stop_after`` ends early after that many iterations of this call (tests use it to
        simulate an interruption).
        """
        c = self.config
        d = self.dist
        start = self.resume() if resume else 0
        total = c.iterations
        if resume and d.main:
            print(f"resumed from iteration {start} of {total} ({self.out})", file=sys.stderr)
        dataset = self.train_sampler.dataset(c.meta_batch, max(total - start, 0),
                                             start=start, rank=d.rank, world=d.world)
        # its own generator: creating the loader must not consume the global torch RNG,
        # or a resumed run would diverge from an uninterrupted one
        loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=c.workers,
                            generator=torch.Generator().manual_seed(c.seed))
        for cb in self.callbacks:
            cb.on_fit_start(self, start)
        self.algo.train()
        t0 = time.perf_counter()
        done = 0
        try:
            for i, batch in enumerate(loader, start=start):
                with autocast(self.device, c.precision):
                    out = self.algo(batch.to(self.device), iteration=i)
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                all_reduce_gradients(self.algo.parameters(), d)
                metrics = average_metrics(out.metrics, d)
                params = [p for p in self.algo.parameters() if p.grad is not None]
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    params, c.clip_norm if c.clip_norm > 0 else float("inf")))
                # the reduced gradient and averaged loss are the same on every rank, so
                # every rank takes the same decision
                skip = not (math.isfinite(grad_norm) and math.isfinite(metrics["loss"]))
                if skip:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.state.skipped += 1
                    self.state.skipped_in_a_row += 1
                else:
                    self.optimizer.step()
                    self.state.skipped_in_a_row = 0
                lr = self.schedule.get_last_lr()[0]
                self.schedule.step()
                self.state.iteration = i + 1
                record = IterationRecord(i + 1, lr, metrics, grad_norm,
                                         round(time.perf_counter() - t0, 3), i + 1 == total,
                                         skipped=skip)
                for cb in self.callbacks:
                    cb.on_iteration_end(self, record)
                if self.state.skipped_in_a_row > c.max_nonfinite:
                    last_good = self.out / "latest.safetensors"
                    raise DivergenceError(
                        f"meta-loss or meta-gradient not finite for {self.state.skipped_in_a_row}"
                        f" iterations in a row (up to iteration {i + 1}; {self.state.skipped} "
                        f"skipped in all): the inner or meta step size is probably too large. "
                        f"Last good checkpoint: "
                        f"{last_good if last_good.is_file() else 'none written yet'}")
                done += 1
                if stop_after is not None and done >= stop_after:
                    break
        finally:
            for cb in self.callbacks:
                cb.on_fit_end(self)
        return self.state
