"""Meta-training from a config, end to end: data, model, algorithm, trainer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metavox.audio.features import FrontendConfig
from metavox.engine import (
    Callback,
    Checkpointing,
    CSVLog,
    EngineConfig,
    ProgressBar,
    TensorBoardLog,
    Trainer,
    TrainState,
    Validation,
    pretrain_classifier,
)
from metavox.engine.distributed import (
    from_environment,
    group_active,
    main_first,
    restarted,
    shutdown,
)
from metavox.meta import MetaAlgorithm
from metavox.pipeline.build import (
    RunData,
    build_algorithm,
    build_model,
    build_run_data,
    make_sampler,
    run_device,
    training_sampler,
)
from metavox.pipeline.config import ConfigError, RunConfig, config_from_dict, to_toml
from metavox.pipeline.select import (
    AdaptationSettings,
    Selection,
    adaptation_config,
    first_validation,
    saturation_warnings,
    select_adaptation,
    set_adaptation,
    warn_saturation,
)
from metavox.storage import (
    Checkpoint,
    CheckpointError,
    atomic_write,
    folder_lock,
    load_checkpoint,
)

#: the checkpoints a run writes into its folder
CHECKPOINTS = ("latest.safetensors", "best.safetensors")


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    state: TrainState
    out: Path
    data: RunData
    algo: MetaAlgorithm
    #: the test-time adaptation settings chosen on validation, if the config asked
    selection: Selection | None = None


def train(cfg: RunConfig, *, resume: bool = False, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Meta-train as ``cfg`` says; checkpoints and logs go to ``cfg.out``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank trains on its share of every
    meta-batch and rank 0 alone writes; after an elastic restart the group resumes from
    the last checkpoint by itself.
    """
    out = Path(cfg.out)
    device = run_device(cfg)
    joined = group_active()  # a caller's group (evaluation training its baselines) stays
    d = from_environment(device.type)
    lock = contextlib.ExitStack()
    try:
        if d.enabled:
            if cfg.episodes.meta_batch % d.world:
                raise ConfigError(
                    f"episodes.meta_batch = {cfg.episodes.meta_batch} cannot be split over "
                    f"{d.world} processes: make it a multiple of {d.world}")
            if device.type == "cuda":
                device = torch.device("cuda", d.local_rank)
                torch.cuda.set_device(device)
            resume = resume or (restarted() and (out / "latest.safetensors").is_file())
        if resume and not (out / "latest.safetensors").is_file():
            raise CheckpointError(f"--resume: no checkpoint to resume from in {out}")
        with main_first(d):  # rank 0 builds the feature cache, the others reuse it
            data = build_run_data(cfg, progress=progress and d.main)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, data.input_shape, cfg.episodes.ways)
        if cfg.optim.pretrain_iterations and not resume:
            pretrain_body(cfg, model, data, progress=progress and d.main)
        algo = build_algorithm(cfg, model)
        if cfg.algorithm.cohort and not resume:
            set_training_cohort(cfg, algo, data)
        train_s = training_sampler(cfg, data)
        val_s = None
        if "val" in data.parts and len(data.parts["val"]) and cfg.validation.episodes > 0:
            val_s = make_sampler(data.parts["val"], cfg.episodes, seed=cfg.seed, stream="val")
        if d.main:  # one writer per run folder: a second `metavox train` into it is refused
            lock.enter_context(folder_lock(out))
            remove_stale_checkpoint_temps(out)
            atomic_write(out / "config.toml", to_toml(cfg.to_dict()))
            data.split.save(out / "split.json")
        meta = {"config": cfg.to_dict(), "frontend": data.frontend.to_dict(),
                "ways": cfg.episodes.ways}
        trainer = Trainer(algo, train_s, engine_config(cfg), out=out, meta=meta,
                          callbacks=run_callbacks(cfg, out, val_s, progress=progress and d.main,
                                                  writer=d.main),
                          device=device, dist=d)
        state = trainer.fit(resume=resume, stop_after=stop_after)
        selection = None
        if state.iteration == cfg.optim.iterations:
            first = first_validation(out) if d.main else None
            selection = select_adaptation(cfg, out, data.parts.get("val") if val_s else None,
                                          data.input_shape, device=device, dist=d,
                                          first_check=first)
            if selection is None and d.main:  # the checkpoint choice alone
                warn_saturation(saturation_warnings([], first))
    finally:
        lock.close()
        if d.enabled and not joined:
            shutdown()
    return TrainResult(state, out, data, trainer.algo, selection)


def set_training_cohort(cfg: RunConfig, algo: MetaAlgorithm, data: RunData) -> None:
    """Give an algorithm that takes a cohort (protoreject) ``algorithm.cohort`` clips of
    the training words (the run's training part and the ``[[data.mix]]`` corpora's),
    drawn by the run's seed (they are saved with its parameters)."""
    stores = [data.parts["train"], *(m for m, _ in data.mix)]
    which = np.concatenate([np.full(len(st), i) for i, st in enumerate(stores)])
    index = np.concatenate([np.arange(len(st)) for st in stores])
    picked = np.sort(np.random.default_rng([cfg.seed, 29]).permutation(len(which))
                     [:cfg.algorithm.cohort])
    x = [stores[i].take(np.sort(index[picked[which[picked] == i]]))
         for i in range(len(stores)) if (which[picked] == i).any()]
    algo.set_cohort(torch.from_numpy(np.concatenate(x)).unsqueeze(1))


def remove_stale_checkpoint_temps(out: Path) -> list[Path]:
    """Delete the temporary files of checkpoints whose write a killed run left unfinished
    (``.latest.safetensors.XXXX.tmp``, see :func:`metavox.storage.atomic_path`). Call it
    holding the folder's lock: no other process is writing them then."""
    stale = [p for c in CHECKPOINTS for p in out.glob(f".{c}.*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def pretrain_body(cfg: RunConfig, model: nn.Module, data: RunData, *,
                  progress: bool = False) -> None:
    """Pre-train then meta-train: a classifier of every training class, starting from
    ``model``'s weights, learns with plain mini-batches; its body replaces ``model``'s (the
    head, sized for the episodes' ways, stays as it is)."""
    store = data.parts["train"]
    classifier = build_model(cfg, data.input_shape, len(set(store.labels)))
    classifier.body.load_state_dict(model.body.state_dict())
    pretrain_classifier(classifier, store, iterations=cfg.optim.pretrain_iterations,
                        lr=cfg.optim.lr, seed=cfg.seed, progress=progress)
    model.body.load_state_dict(classifier.body.state_dict())


def engine_config(cfg: RunConfig) -> EngineConfig:
    """The part of a run config the training engine needs."""
    o = cfg.optim
    return EngineConfig(iterations=o.iterations, meta_batch=cfg.episodes.meta_batch, lr=o.lr,
                        weight_decay=o.weight_decay, warmup=o.warmup,
                        min_lr_ratio=o.min_lr_ratio, clip_norm=o.clip_norm,
                        precision=cfg.precision, seed=cfg.seed, workers=cfg.data.workers,
                        max_nonfinite=o.max_nonfinite)


def run_callbacks(cfg: RunConfig, out: Path, val, *, progress: bool,
                  writer: bool) -> list[Callback]:
    """A run's callbacks, in order: validation (when there are validation episodes), the
    CSV and TensorBoard logs (``writer``: rank 0), checkpoints, a progress bar."""
    v = cfg.validation
    callbacks: list[Callback] = []
    if val is not None:
        callbacks.append(Validation(val, every=v.every, episodes=v.episodes))
    if writer:
        callbacks += [CSVLog(out / "metrics.csv"), TensorBoardLog(out / "tb")]
    callbacks.append(Checkpointing(every=v.checkpoint_every, final_is_best=val is None))
    if progress:
        callbacks.append(ProgressBar(f"meta-train {cfg.algorithm.name}"))
    return callbacks


@dataclass
class LoadedModel:
    """A meta-trained algorithm rebuilt from a checkpoint, with its settings."""

    algo: MetaAlgorithm
    config: RunConfig
    frontend: FrontendConfig
    meta: dict
    #: what the algorithm adapts with at test time, and where each value came from
    adaptation: AdaptationSettings | None = None


def rebuild_model(ckpt: Checkpoint, source: str | Path) -> tuple[nn.Module, RunConfig,
                                                                  FrontendConfig]:
    """A freshly built backbone of the architecture a checkpoint or saved learner was made
    with (from the run config, front-end and ways in its metadata), with those settings."""
    try:
        frontend = FrontendConfig.from_dict(ckpt.meta["frontend"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: saved with a front-end this metavox cannot build "
                              f"({err}); was it made by another metavox version?") from None
    except KeyError:
        raise CheckpointError(f"{source}: metadata incomplete (no front-end)") from None
    try:
        cfg = config_from_dict(ckpt.meta["config"])
        ways = int(ckpt.meta["ways"])
        differ = frontend_differences(cfg, frontend)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: metadata incomplete or incompatible ({err})"
                              ) from None
    if differ:
        raise CheckpointError(
            f"{source}: saved with a front-end ({'; '.join(differ)}) other than the one its "
            "config makes: the weights would see features unlike those they learned on. "
            "Was the file edited, or its metadata taken from another run?")
    return build_model(cfg, (frontend.num_features, frontend.num_frames), ways), cfg, frontend


def frontend_differences(cfg: RunConfig, frontend: FrontendConfig) -> list[str]:
    """Where ``frontend`` (stored in a checkpoint) departs from what ``cfg`` (stored beside
    it) sets, as ``"name X, config Y"``. Only settings the config (or its model) gives are
    compared, so a default that changed between metavox versions is no difference."""
    wanted = cfg.frontend_config().to_dict()
    defaults = FrontendConfig().to_dict()
    stored = frontend.to_dict()
    names = set(cfg.frontend) | {k for k, v in wanted.items() if v != defaults[k]}
    return [f"{k} {stored[k]!r}, config {wanted[k]!r}" for k in sorted(names)
            if stored[k] != wanted[k]]


def load_trained(path: str | Path, device: str = "cpu", *, inner_lr: float | None = None,
                 steps: int | None = None) -> LoadedModel:
    """Rebuild the algorithm stored in a checkpoint (file or run folder). It adapts with
    ``inner_lr`` / ``steps`` where given (``--inner-lr`` / ``--steps``), else with the
    settings chosen on validation and stored with the checkpoint, else the training
    config's; ``LoadedModel.adaptation`` says which."""
    ckpt = load_checkpoint(path)
    model, cfg, frontend = rebuild_model(ckpt, path)
    selected = ckpt.meta.get("adaptation")
    algo = build_algorithm(adaptation_config(cfg, selected), model)
    try:
        algo.load_state_dict(ckpt.section("algo"))
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the configured model ({err})") from None
    settings = set_adaptation(algo, cfg, selected, inner_lr=inner_lr, steps=steps)
    return LoadedModel(algo.to(device).eval(), cfg, frontend, ckpt.meta, settings)
