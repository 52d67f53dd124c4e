"""The training loop's callbacks: validation, checkpoints, CSV and TensorBoard logs, a
progress report. A run composes the ones it needs (rank 0 alone gets the writers)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from metavox.data.episodes import EpisodeSampler
from metavox.engine.evaluation import evaluate_episodes
from metavox.engine.loop import Callback, IterationRecord, Trainer
from metavox.progress import Progress

LOG_FIELDS = ["iteration", "lr", "loss", "accuracy", "accuracy_before", "grad_norm",
              "val_accuracy", "val_ci95", "seconds", "skipped"]


class Validation(Callback):
    """Every ``every`` iterations (and at the last) evaluate the fixed validation episodes
    ``0..episodes-1`` of ``sampler``; a new best validation accuracy is saved as
    ``best.safetensors`` (for regression tasks the score is the query loss)."""

    def __init__(self, sampler: EpisodeSampler, *, every: int, episodes: int) -> None:
        self.sampler, self.every, self.episodes = sampler, every, episodes

    def validate(self, trainer: Trainer) -> tuple[float, float]:
        """Mean validation accuracy and its 95% interval."""
        res = evaluate_episodes(trainer.algo, self.sampler, self.episodes,
                                meta_batch=trainer.config.meta_batch, device=trainer.device,
                                dist=trainer.dist, precision=trainer.config.precision)
        return res.score("accuracy" if "accuracy" in res.per_task else "query_loss")

    def on_iteration_end(self, trainer: Trainer, record: IterationRecord) -> None:
        if record.iteration % self.every == 0 or record.last:
            record.val_accuracy, record.val_ci95 = self.validate(trainer)
            trainer.record_validation(record.iteration, record.val_accuracy)


class Checkpointing(Callback):
    """``latest.safetensors`` every ``every`` iterations and at the last. With
    ``final_is_best`` (a run without validation) the final parameters are also saved as
    ``best.safetensors``: there is nothing else to select by."""

    def __init__(self, *, every: int, final_is_best: bool = False) -> None:
        self.every, self.final_is_best = every, final_is_best

    def on_iteration_end(self, trainer: Trainer, record: IterationRecord) -> None:
        if record.iteration % self.every == 0 or record.last:
            trainer.save("latest.safetensors")
        if record.last and self.final_is_best:
            trainer.save("best.safetensors")


def _row(record: IterationRecord) -> dict[str, Any]:
    m = record.metrics
    return {"iteration": record.iteration, "lr": record.lr, "loss": m["loss"],
            "accuracy": m.get("accuracy", ""), "accuracy_before": m.get("accuracy_before", ""),
            "grad_norm": record.grad_norm,
            "val_accuracy": "" if record.val_accuracy is None else record.val_accuracy,
            "val_ci95": "" if record.val_ci95 is None else record.val_ci95,
            "seconds": record.seconds, "skipped": int(record.skipped)}


class CSVLog(Callback):
    """``metrics.csv``: one row per iteration; on resume the rows up to the resume point
    are kept and the rest rewritten."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = None
        self._writer: csv.DictWriter | None = None

    def on_fit_start(self, trainer: Trainer, start: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if start > 0 and self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= start]
        self._file = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=LOG_FIELDS)
        self._writer.writeheader()
        self._writer.writerows(rows)

    def on_iteration_end(self, trainer: Trainer, record: IterationRecord) -> None:
        self._writer.writerow(_row(record))
        self._file.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardLog(Callback):
    """TensorBoard events under ``folder`` when TensorBoard is installed (else nothing)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._tb = None

    def on_fit_start(self, trainer: Trainer, start: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self._tb = SummaryWriter(log_dir=str(self.folder), purge_step=start + 1)

    def on_iteration_end(self, trainer: Trainer, record: IterationRecord) -> None:
        if self._tb is None:
            return
        row = _row(record)
        for k in ("loss", "accuracy", "accuracy_before", "lr", "grad_norm", "val_accuracy"):
            if row[k] != "":
                tag = "val/accuracy" if k == "val_accuracy" else f"train/{k}"
                self._tb.add_scalar(tag, float(row[k]), record.iteration)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class ProgressBar(Callback):
    """Training progress (:class:`metavox.progress.Progress`): a bar on a terminal, else a
    plain line every ``interval`` seconds; with the loss, training accuracy and best
    validation accuracy."""

    def __init__(self, desc: str, *, interval: float = 10.0) -> None:
        self.desc, self.interval = desc, interval
        self._bar: Progress | None = None

    def on_fit_start(self, trainer: Trainer, start: int) -> None:
        self._bar = Progress(trainer.config.iterations, self.desc, "it", initial=start,
                             interval=self.interval)

    def on_iteration_end(self, trainer: Trainer, record: IterationRecord) -> None:
        post = [f"loss {record.metrics['loss']:.3f}"]
        if "accuracy" in record.metrics:
            post.append(f"acc {record.metrics['accuracy']:.3f}")
        if trainer.state.best_val >= 0:
            post.append(f"val {trainer.state.best_val:.3f}")
        self._bar.set_postfix(", ".join(post))
        self._bar.update(1)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
