"""Choosing how to adapt at test time on validation tasks: the inner step size and the
number of inner steps (the "two learning rates" of MAML, beside the meta step size).

After meta-training, every combination of the candidates in ``[validation]
select_inner_lr`` and ``select_eval_steps`` adapts on the same validation episodes from
the best checkpoint; the best mean accuracy wins (ties: the earlier candidate). The choice
and the whole table go into the checkpoints' metadata (``adaptation``) and
``selection.json``; :func:`metavox.pipeline.train.load_trained` builds the algorithm with
them. Test episodes are never looked at.

When validation cannot discriminate (every candidate within the best one's 95% interval,
or validation accuracy already >= 99.5% at the first check) the choice is noise: a
:class:`SaturatedValidationWarning` says so, with what to do, and ``selection.json``
keeps it under ``warnings``.

:func:`adaptation_settings` decides what an evaluation adapts with: the command line's
``--inner-lr`` / ``--steps``, else the selection stored with the checkpoint, else the
training config, and records which (:class:`AdaptationSettings`).
"""

from __future__ import annotations

import csv
import itertools
import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from metavox.engine import evaluate_episodes
from metavox.engine.distributed import SINGLE, Dist
from metavox.meta import MAML, InnerLoopAlgorithm, MetaAlgorithm
from metavox.pipeline.build import build_algorithm, build_model, make_sampler
from metavox.pipeline.config import ConfigError, RunConfig
from metavox.storage import Checkpoint, atomic_write, load_checkpoint, save_checkpoint

#: validation accuracy at or above this at the first check leaves nothing to choose by
SATURATED = 0.995


class SaturatedValidationWarning(UserWarning):
    """Validation cannot tell checkpoints or adaptation settings apart: the choice among
    them was decided by noise."""


@dataclass
class Selection:
    """The chosen adaptation settings and every candidate's validation accuracy, with the
    warnings when validation could not discriminate."""

    inner_lr: float
    eval_steps: int
    table: list[dict[str, float]]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"inner_lr": self.inner_lr, "eval_steps": self.eval_steps, "table": self.table,
                "warnings": self.warnings}


def first_validation(out: Path) -> tuple[int, float] | None:
    """``(iteration, accuracy)`` of a run's first validation check, from its
    ``metrics.csv``; ``None`` when there is none (or the run is a regression, whose
    validation score is a loss)."""
    path = Path(out) / "metrics.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val_accuracy") and row.get("accuracy"):
                return int(row["iteration"]), float(row["val_accuracy"])
    return None


def saturation_warnings(table: list[dict[str, float]],
                        first_check: tuple[int, float] | None) -> list[str]:
    """The warning (a one-item list; empty when validation discriminates) when validation
    cannot tell apart the selection's candidates (``table``: best and worst within the
    best one's 95% interval) or the checkpoints (accuracy >= :data:`SATURATED` at the
    ``first_check``), with what to do about it."""
    problems = []
    if first_check is not None and first_check[1] >= SATURATED:
        it, acc = first_check
        problems.append(f"validation accuracy was already {100 * acc:.1f}% at the first check "
                        f"(iteration {it}), so the best checkpoint was picked among scores "
                        "that differ by noise")
    scored = [r for r in table if r["accuracy"] == r["accuracy"]]  # NaN: no score
    if len(scored) > 1:
        best = max(scored, key=lambda r: r["accuracy"])
        lo, hi = min(r["accuracy"] for r in scored), best["accuracy"]
        if hi - lo <= best["ci95"]:
            problems.append(f"all {len(scored)} inner_lr x eval_steps candidates scored "
                            f"{100 * lo:.1f}-{100 * hi:.1f}%, within the best one's 95% "
                            f"interval (± {100 * best['ci95']:.1f}%), so the chosen settings "
                            "were decided by noise")
    if not problems:
        return []
    return ["validation cannot discriminate: " + "; ".join(problems) + ". Make validation "
            "harder: more ways or fewer shots (episodes.ways, episodes.shots; validation "
            "episodes are drawn like the training ones), harder validation words or speakers "
            "([data] val_labels, val_speakers), or more validation.episodes for a narrower "
            "interval."]


def warn_saturation(messages: list[str]) -> None:
    """Each of ``messages`` as a :class:`SaturatedValidationWarning`."""
    for m in messages:
        warnings.warn(m, SaturatedValidationWarning, stacklevel=3)


def adaptation_config(cfg: RunConfig, adaptation: dict[str, Any] | None) -> RunConfig:
    """``cfg`` with the selected ``inner_lr`` / ``eval_steps`` (if any) in its algorithm."""
    if not adaptation:
        return cfg
    return replace(cfg, algorithm=replace(cfg.algorithm, inner_lr=adaptation["inner_lr"],
                                          eval_steps=adaptation["eval_steps"]))


def select_adaptation(cfg: RunConfig, out: Path, val_store, input_shape: tuple[int, int], *,
                      device="cpu", dist: Dist = SINGLE,
                      first_check: tuple[int, float] | None = None) -> Selection | None:
    """Score the candidates on the validation episodes and record the best in ``out``'s
    checkpoints; None when the config asks for no selection. ``first_check``: the
    training's first validation ``(iteration, accuracy)``, for the saturation warning
    (:func:`saturation_warnings`; warned on the main process and kept in the
    selection)."""
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
    if v.select_metric == "open_set":
        return select_open_set(cfg, out, val_store, input_shape, lrs, steps, device=device,
                               dist=dist)
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
    chosen = Selection(best["inner_lr"], best["eval_steps"], table,
                       saturation_warnings(table, first_check))
    if dist.main:
        warn_saturation(chosen.warnings)
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


#: the false-accept rate per non-target clip at which open-set selection scores detection
SELECT_FAR = 0.01


def open_set_validation(cfg: RunConfig, val_store, *, shots: int):
    """``(sampler, pool_x, pool_labels)`` of the open-set validation: episodes of
    ``min(ways, validation words - 2)`` validation words (so at least two are left as
    non-target words; as many queries as the smallest word allows, up to
    ``evaluation.queries``), scored on a pool of every validation clip, up to 1000 clips of the
    training words and the backgrounds enrollment calibrates on."""
    import numpy as np
    import torch

    from metavox.data.episodes import ClassEpisodeSampler
    from metavox.pipeline.build import build_run_data, run_backgrounds_for

    words = sorted(set(val_store.labels))
    ways = min(cfg.episodes.ways, len(words) - 2)
    if ways < 2:
        raise ConfigError("[validation] select_metric = 'open_set' needs at least 4 "
                          f"validation words (2 enrolled, 2 left as non-targets); the split "
                          f"has {len(words)}")
    fewest = min(len(r) for r in val_store.by_label().values())
    queries = min(cfg.evaluation.queries, fewest - shots)
    if queries < 1:
        raise ConfigError(f"[validation] select_metric = 'open_set': {shots}-shot episodes "
                          f"need more than {shots} clips per validation word; one has "
                          f"{fewest}")
    sampler = ClassEpisodeSampler(val_store, ways, shots, queries,
                                  seed=cfg.seed + 1_000_003)
    data = build_run_data(cfg)
    train = data.parts["train"]
    rows = np.sort(np.random.default_rng([cfg.seed, 31]).permutation(len(train))[:1000])
    xs = [torch.from_numpy(val_store.take(np.arange(len(val_store)))),
          torch.from_numpy(train.take(rows)),
          torch.from_numpy(run_backgrounds_for(cfg, data.frontend))]
    labels = [*val_store.labels, *(train.labels[i] for i in rows),
              *["(background)"] * len(xs[2])]
    return sampler, torch.cat(xs).unsqueeze(1), labels


def select_open_set(cfg: RunConfig, out: Path, val_store, input_shape: tuple[int, int],
                    lrs, steps, *, device="cpu", dist: Dist = SINGLE) -> Selection:
    """The open-set selection (``validation.select_metric = "open_set"``): every
    checkpoint (best by validation accuracy, and the last) x inner step size x inner steps
    is scored by detection of the right word at :data:`SELECT_FAR` false accepts per
    non-target clip on :func:`open_set_validation`, averaged over ``evaluation.shots``;
    the winner's weights and settings become ``best.safetensors``."""
    from metavox.engine.openset_eval import score_pool, summarize

    pools = {k: open_set_validation(cfg, val_store, shots=k) for k in cfg.evaluation.shots}
    names = [n for n in ("best", "latest") if (out / f"{n}.safetensors").is_file()]
    ckpts = {n: load_checkpoint(out / f"{n}.safetensors") for n in names}
    table, best = [], None
    for name, lr, s in itertools.product(names, lrs, steps):
        candidate = adaptation_config(cfg, {"inner_lr": float(lr), "eval_steps": int(s)})
        algo = build_algorithm(candidate, build_model(cfg, input_shape, cfg.episodes.ways))
        algo.load_state_dict(ckpts[name].section("algo"))
        det, ci = [], []
        for sampler, pool_x, labels in pools.values():
            got = score_pool(algo, sampler, pool_x, labels, cfg.validation.episodes,
                             device=device)
            d = summarize(got, (SELECT_FAR,), boot=50, seed=cfg.seed).detection[
                f"{100 * SELECT_FAR:g}%"]
            det.append(d[0])
            ci.append(d[1])
        mean = float(sum(det) / len(det))
        table.append({"checkpoint": name, "inner_lr": float(lr), "eval_steps": int(s),
                      "accuracy": mean, "ci95": float(max(ci)),
                      "metric": f"open-set detection at {100 * SELECT_FAR:g}% false accepts"})
        if best is None or mean > best["accuracy"]:
            best = table[-1]
    chosen = Selection(best["inner_lr"], best["eval_steps"], table)
    if dist.main:
        a = cfg.algorithm
        adaptation = {"inner_lr": chosen.inner_lr, "eval_steps": chosen.eval_steps,
                      "trained_inner_lr": a.inner_lr, "trained_eval_steps": a.eval_steps,
                      "checkpoint": best["checkpoint"], "metric": "open_set"}
        c = ckpts[best["checkpoint"]]
        save_checkpoint(out / "best.safetensors", Checkpoint(c.tensors,
                                                             {**c.meta, "adaptation": adaptation}))
        if "latest" in ckpts:
            c = ckpts["latest"]
            save_checkpoint(out / "latest.safetensors",
                            Checkpoint(c.tensors, {**c.meta, "adaptation": adaptation}))
        atomic_write(out / "selection.json", json.dumps(chosen.to_dict(), indent=1) + "\n")
    return chosen


#: where a test-time setting came from (:class:`AdaptationSettings`)
SOURCES = ("command line", "selection", "config", "learned", "none")


@dataclass(frozen=True)
class AdaptationSettings:
    """The inner learning rate and inner steps a loaded model adapts with at test time,
    and where each came from: ``"command line"`` (``--inner-lr`` / ``--steps``),
    ``"selection"`` (chosen on validation after training, stored with the checkpoint) or
    ``"config"`` (the training config, or its algorithm's default); ``"learned"`` for step
    sizes the algorithm learned (Meta-SGD, MAML++: ``inner_lr`` is None), ``"none"`` for an
    algorithm without an inner loop (both None)."""

    algorithm: str
    inner_lr: float | None
    steps: int | None
    inner_lr_source: str
    steps_source: str

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "inner_lr": self.inner_lr, "steps": self.steps,
                "inner_lr_source": self.inner_lr_source, "steps_source": self.steps_source}

    def describe(self) -> str:
        """One sentence for a report."""
        if self.steps is None:
            return (f"Test-time adaptation of {self.algorithm}: no inner loop (no inner "
                    "learning rate or steps).")
        lr = ("inner learning rates learned in training (from the checkpoint)"
              if self.inner_lr is None
              else f"inner learning rate {self.inner_lr:g} ({self.inner_lr_source})")
        return (f"Test-time adaptation of {self.algorithm}: {lr}, {self.steps} inner steps "
                f"({self.steps_source}).")


def set_adaptation(algo: MetaAlgorithm, cfg: RunConfig, selected: dict[str, Any] | None, *,
                   inner_lr: float | None = None, steps: int | None = None
                   ) -> AdaptationSettings:
    """Give ``algo`` (loaded from a checkpoint, with the ``selected`` settings stored there
    or the config's) the command line's ``inner_lr`` / ``steps`` where given, and say what
    it adapts with and where each value came from. A value it cannot take is a
    :class:`ConfigError`: an algorithm without an inner loop, learned step sizes, more
    steps than a per-step table was trained for."""
    name = cfg.algorithm.name
    if not isinstance(algo, InnerLoopAlgorithm):
        if inner_lr is not None or steps is not None:
            raise ConfigError(f"--inner-lr / --steps: {name} has no inner loop to set them for")
        return AdaptationSettings(name, None, None, "none", "none")
    learned = isinstance(algo, MAML) and algo.lr_mode != "fixed"
    if inner_lr is not None:
        if learned:
            raise ConfigError(f"--inner-lr: {name} learns its step sizes "
                              f"(lr_mode={algo.lr_mode!r}); they come from the checkpoint")
        if not inner_lr > 0:
            raise ConfigError(f"--inner-lr must be > 0, got {inner_lr}")
        algo.inner_lr = float(inner_lr)
    if steps is not None:
        if steps < 0:
            raise ConfigError(f"--steps must be >= 0, got {steps}")
        tabled = isinstance(algo, MAML) and (algo.lr_mode == "per_step" or algo.bn_names)
        most = max(algo.steps, algo.eval_steps)
        if tabled and steps > most:
            raise ConfigError(f"--steps {steps}: {name} learned a table of per-step settings "
                              f"for {most} steps; give at most {most}")
        algo.eval_steps = int(steps)
    v = cfg.validation
    lr_source = ("command line" if inner_lr is not None else "learned" if learned
                 else "selection" if selected and v.select_inner_lr else "config")
    steps_source = ("command line" if steps is not None
                    else "selection" if selected and v.select_eval_steps else "config")
    return AdaptationSettings(name, None if learned else algo.inner_lr, algo.eval_steps,
                              lr_source, steps_source)
