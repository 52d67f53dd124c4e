"""Choosing how to adapt at test time on validation tasks: the inner step size and the
number of inner steps (the "two learning rates" of MAML, beside the meta step size).

After meta-training, every combination of the candidates in ``[validation]
select_inner_lr`` and ``select_eval_steps`` adapts on the same validation episodes from
the best checkpoint; the best mean accuracy wins (ties: the earlier candidate). The choice
and the whole table go into the checkpoints' metadata (``adaptation``) and
``selection.json``; :func:`metavox.pipeline.train.load_trained` builds the algorithm with
them. Test episodes are never looked at.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from metavox.engine import evaluate_episodes
from metavox.engine.distributed import SINGLE, Dist
from metavox.meta import MAML, InnerLoopAlgorithm
from metavox.pipeline.build import build_algorithm, build_model, make_sampler
from metavox.pipeline.config import ConfigError, RunConfig
from metavox.storage import Checkpoint, atomic_write, load_checkpoint, save_checkpoint


@dataclass
class Selection:
    """The chosen adaptation settings and every candidate's validation accuracy."""

    inner_lr: float
    eval_steps: int
    table: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"inner_lr": self.inner_lr, "eval_steps": self.eval_steps, "table": self.table}


def adaptation_config(cfg: RunConfig, adaptation: dict[str, Any] | None) -> RunConfig:
    """``cfg`` with the selected ``inner_lr`` / ``eval_steps`` (if any) in its algorithm."""
    if not adaptation:
        return cfg
    return replace(cfg, algorithm=replace(cfg.algorithm, inner_lr=adaptation["inner_lr"],
                                          eval_steps=adaptation["eval_steps"]))


def select_adaptation(cfg: RunConfig, out: Path, val_store, input_shape: tuple[int, int], *,
                      device="cpu", dist: Dist = SINGLE) -> Selection | None:
    """Score the candidates on the validation episodes and record the best in ``out``'s
    checkpoints; None when the config asks for no selection."""
    v, a = cfg.validation, cfg.algorithm
    if not v.select_inner_lr and not v.select_eval_steps:
        return None
    if val_store is None or v.episodes < 1:
        raise ConfigError("[validation] select_inner_lr / select_eval_steps need validation "
                          "episodes (validation.episodes >= 1 and validation classes or "
                          "speakers in the split)")
    ckpt = load_checkpoint(out / "best.safetensors")
    trained = build_algorithm(cfg, build_model(cfg, input_shape, cfg.episodes.ways))
    if not isinstance(trained, InnerLoopAlgorithm):
        raise ConfigError(f"[validation] select_inner_lr / select_eval_steps: {a.name} has no "
                          "inner loop to choose settings for")
    if v.select_inner_lr and isinstance(trained, MAML) and trained.lr_mode != "fixed":
        raise ConfigError(f"[validation] select_inner_lr: {a.name} learns its step sizes "
                          f"(lr_mode={trained.lr_mode!r}); they come from the checkpoint")
    lrs = v.select_inner_lr or [trained.inner_lr]
    steps = v.select_eval_steps or [trained.eval_steps]
    sampler = make_sampler(val_store, cfg.episodes, seed=cfg.seed, stream="val")
    table, best = [], None
    for lr, s in itertools.product(lrs, steps):
        candidate = adaptation_config(cfg, {"inner_lr": float(lr), "eval_steps": int(s)})
        algo = build_algorithm(candidate, build_model(cfg, input_shape, cfg.episodes.ways))
        try:
            algo.load_state_dict(ckpt.section("algo"))
        except RuntimeError as err:
            raise ConfigError(f"[validation] selection: {cfg.algorithm.name} with "
                              f"eval_steps={s} does not fit the trained parameters (learned "
                              f"per-step tables have a fixed length): {err}") from None
        res = evaluate_episodes(algo.to(device), sampler, v.episodes,
                                meta_batch=cfg.episodes.meta_batch, device=device, dist=dist,
                                precision=cfg.precision)
        mean, ci = res.score()
        table.append({"inner_lr": float(lr), "eval_steps": int(s), "accuracy": mean,
                      "ci95": ci})
        if best is None or mean > best["accuracy"]:
            best = table[-1]
    chosen = Selection(best["inner_lr"], best["eval_steps"], table)
    if dist.main:
        adaptation = {"inner_lr": chosen.inner_lr, "eval_steps": chosen.eval_steps,
                      "trained_inner_lr": a.inner_lr, "trained_eval_steps": a.eval_steps}
        latest = out / "latest.safetensors"
        for path, c in ((out / "best.safetensors", ckpt),
                        (latest, load_checkpoint(latest) if latest.is_file() else None)):
            if c is not None:
                save_checkpoint(path, Checkpoint(c.tensors, {**c.meta,
                                                             "adaptation": adaptation}))
        atomic_write(out / "selection.json", json.dumps(chosen.to_dict(), indent=1) + "\n")
    return chosen
