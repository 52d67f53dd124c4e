"""Run configuration: typed sections with defaults, read from TOML, checked strictly.

A config names everything a run needs — corpus, split, front-end, episodes, backbone,
algorithm, optimiser, validation, evaluation — so that the resolved config stored beside a
checkpoint or report reproduces it. Unknown keys and wrong types are errors that name the
key and what is accepted; ``--set section.key=value`` overrides parse values as TOML.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from metavox.audio.features import FrontendConfig
from metavox.engine.precision import PRECISIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib



#: the baselines ``evaluation.baselines`` may name (see :mod:`metavox.pipeline.baselines`)
BASELINES = ("protonet", "finetune", "scratch", "noadapt", "centroid")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key and why."""


@dataclass
class MixConfig:
    """One more corpus whose tasks join meta-training (``[[data.mix]]``). All its classes
    are training classes, except any that the run's validation or test parts name: those
    are left out, so the held-out words stay unseen by meta-training."""

    corpus: str = ""  # as data.corpus: preset, pattern, manifest, folder or "synth"
    root: str = ""
    weight: float = 1.0  # share of training episodes, relative to data.weight and the others


@dataclass
class DataConfig:
    """Which corpus, how it is split, where features are cached; optionally more corpora
    mixed into meta-training with stated weights (``[[data.mix]]``)."""

    corpus: str = "synth"  # preset name, pattern, manifest (.csv), folder, or "synth"
    root: str = ""  # the corpus folder for a preset or a pattern
    split: str = "class"  # "class", "speaker" or "both"
    split_file: str = ""  # load this saved split instead of making one
    test_labels: list[str] = field(default_factory=list)  # fixed meta-test classes
    val_labels: list[str] = field(default_factory=list)  # fixed validation classes
    test_speakers: list[str] = field(default_factory=list)  # fixed meta-test speakers
    val_speakers: list[str] = field(default_factory=list)
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    cache_dir: str = ""  # default: $METAVOX_CACHE or ~/.cache/metavox
    workers: int = 0  # DataLoader workers for episodes
    feature_workers: int = 0  # processes building the feature cache (0: one per usable core)
    weight: float = 1.0  # this corpus's share of training episodes when data.mix is set
    mix: list[MixConfig] = field(default_factory=list)


@dataclass
class EpisodeConfig:
    """N-way K-shot tasks: by class ("class") or one speaker per task ("speaker")."""

    protocol: str = "class"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    meta_batch: int = 4
    speaker_disjoint: bool = False
    #: open-set meta-training (class protocol, training episodes only): words per task that
    #: appear only among its queries (never in its support), labelled unknown; 0: off.
    #: Only algorithms that train rejection (protoreject) get them; any other (the ProtoNet
    #: baseline an evaluation trains from such a run's config) trains on the same tasks
    #: without the unknowns
    unknown_words: int = 0
    unknown_queries: int = 5  # clips per unknown word
    #: backgrounds per task among the queries (generated noises and silence, and the
    #: corpus's _background_noise_ / _silence_ recordings, as enrollment's negatives)
    background_queries: int = 0
    #: probability that an unknown word is a hard negative: one of the hard_pool words
    #: nearest an enrolled word by the frozen features' centroids, or listed for it in
    #: confusable_file (JSON: word -> list of near-homophones)
    hard_negatives: float = 0.5
    hard_pool: int = 3
    confusable_file: str = ""


@dataclass
class AugmentConfig:
    """Feature-level augmentation of meta-training episodes (never of validation or test).

    SpecAugment works on the cached features, so training never decodes audio again;
    waveform augmentations (noise, shift, gain) are in ``metavox.audio.augment``.
    """

    spec_augment: bool = False
    freq_masks: int = 2
    freq_width: int = 8
    time_masks: int = 2
    time_width: int = 10


@dataclass
class ModelConfig:
    """A registered backbone and its options (see ``metavox.models``)."""

    name: str = "conv4"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class AlgorithmConfig:
    """A registered algorithm (``metavox algorithms`` lists them) and its options.

    ``inner_lr``, ``steps`` and ``eval_steps`` mean the same for every algorithm (see
    :func:`metavox.meta.create_algorithm`); left out, the algorithm's own default holds
    (0.4, 5 and ``steps`` for the inner-loop algorithms). ``options`` are the
    algorithm's own keywords; one it does not take is an error.
    """

    name: str = "maml"
    inner_lr: float | None = None
    steps: int | None = None
    eval_steps: int | None = None
    first_order: bool | None = None
    strategy: str = "auto"
    chunk_size: int = 0  # 0: the strategy's default
    options: dict[str, Any] = field(default_factory=dict)  # algorithm-specific extras
    #: clips of the training words stored with an algorithm that takes a cohort
    #: (protoreject: where each word's non-target scores lie); 0: none
    cohort: int = 0


@dataclass
class OptimConfig:
    """Adam meta-optimiser with linear warm-up then cosine decay, gradient clipping."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    iterations: int = 2000
    warmup: int = 100
    min_lr_ratio: float = 0.01
    clip_norm: float = 10.0  # 0 disables clipping
    #: non-finite meta-losses or gradients skip their update; this many in a row stop the
    #: run (naming the iteration and the last good checkpoint)
    max_nonfinite: int = 5
    #: before meta-training, train the backbone as a plain classifier of every training
    #: class for this many mini-batches of 64 clips, and meta-train from its body (0: off)
    pretrain_iterations: int = 0


@dataclass
class ValidationConfig:
    """Validation on held-out classes during training; the best checkpoint is kept."""

    every: int = 100
    episodes: int = 100
    checkpoint_every: int = 100
    #: after training, choose the inner step size and the number of inner steps used when
    #: adapting at test time on the validation episodes (every combination is scored; the
    #: best is stored with the checkpoint, the run's config stays the training config).
    #: Empty: keep ``algorithm.inner_lr`` / ``algorithm.eval_steps``.
    select_inner_lr: list[float] = field(default_factory=list)
    select_eval_steps: list[int] = field(default_factory=list)
    #: what the selection maximises: "accuracy" (closed set) or "open_set" (detection of
    #: the right word at 1% false accepts per non-target clip on the validation words,
    #: the other validation words and backgrounds as non-targets); with "open_set" the
    #: best and the last checkpoints are both candidates
    select_metric: str = "accuracy"


@dataclass
class EvaluationConfig:
    """Meta-test: episodes, shots, inner-step sweep, baselines run on the same episodes."""

    episodes: int = 600
    shots: list[int] = field(default_factory=lambda: [1, 5])
    queries: int = 15  # per class, at meta-test (training uses episodes.queries)
    max_steps: int = 10
    baselines: list[str] = field(default_factory=lambda: ["protonet", "finetune", "scratch"])
    pretrain_iterations: int = 500  # the classifier behind the fine-tune baselines
    finetune_steps: int = 100  # head-only fine-tuning steps per episode
    finetune_all_steps: int = 20  # whole-network fine-tuning (and from-scratch) steps
    finetune_lr: float = 0.5  # step size of the new head (on scaled, normalised features)
    finetune_body_lr: float = 0.01  # step size of the pre-trained body
    scratch_lr: float = 0.05  # step size of an untrained body
    #: also measure the open set on the same episodes: detection of the right word at
    #: 1% / 0.1% / 0.01% false accepts per non-target clip, and the EER
    open_set: bool = False
    open_set_rule: str = "logit"  # "logit" | "probability": each clip's score
    open_set_boot: int = 200  # bootstrap replicates of the intervals


@dataclass
class RunConfig:
    """Everything one training run needs."""

    seed: int = 0
    out: str = "runs/metavox"
    device: str = "auto"
    #: "float32", or "bfloat16": autocast for the meta-learners' forward passes and
    #: adaptation (parameters, optimiser state and checkpoints stay float32)
    precision: str = "float32"
    data: DataConfig = field(default_factory=DataConfig)
    frontend: dict[str, Any] = field(default_factory=dict)  # FrontendConfig overrides
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def frontend_config(self) -> FrontendConfig:
        """The front-end these settings describe: the backbone's declared front-end
        (:data:`metavox.models.FRONTENDS`) with the ``[frontend]`` settings on top, which
        may not contradict it; defaults filled in."""
        from metavox.models import model_frontend

        fixed = model_frontend(self.model.name, self.model.options)
        clash = sorted(k for k in set(fixed) & set(self.frontend) if fixed[k] != self.frontend[k])
        if clash:
            raise ConfigError(f"[frontend]: model {self.model.name!r} needs "
                              + ", ".join(f"{k} = {fixed[k]!r}" for k in clash))
        try:
            return FrontendConfig.from_dict({**fixed, **self.frontend})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"[frontend]: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/TOML-ready), every default filled in."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted for floats)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of settings, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got a boolean {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(
            f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    return value


def _build(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        place = f"[{where}]" if where else "the top level"
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {place}; "
            f"accepted: {', '.join(sorted(known))}"
        )
    kwargs = {
        k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()
    }
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A validated :class:`RunConfig` from plain data (unknown keys are errors)."""
    cfg = _build(RunConfig, data)
    _check_values(cfg)
    return cfg


def _check_values(cfg: RunConfig) -> None:
    from metavox.meta import ALGORITHMS
    from metavox.models import REGISTRY

    problems = []
    a = cfg.algorithm
    if a.name not in ALGORITHMS:
        problems.append(f"algorithm.name {a.name!r} is not one of {sorted(ALGORITHMS)}")
    elif not ALGORITHMS[a.name].meta_trained:
        problems.append(f"algorithm.name {a.name!r} is an evaluation-only baseline; "
                        "`metavox evaluate` runs it beside a meta-trained model")
    if cfg.model.name not in REGISTRY:
        problems.append(f"model.name {cfg.model.name!r} is not one of {sorted(REGISTRY)}")
    if cfg.episodes.protocol not in ("class", "speaker"):
        problems.append(f"episodes.protocol must be 'class' or 'speaker', got "
                        f"{cfg.episodes.protocol!r}")
    if cfg.precision not in PRECISIONS:
        problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got "
                        f"{cfg.precision!r}")
    if cfg.evaluation.open_set_rule not in ("logit", "probability"):
        problems.append(f"evaluation.open_set_rule must be 'logit' or 'probability', got "
                        f"{cfg.evaluation.open_set_rule!r}")
    if cfg.data.feature_workers < 0:
        problems.append(f"data.feature_workers must be >= 0 (0: one per core), got "
                        f"{cfg.data.feature_workers}")
    for i, m in enumerate(cfg.data.mix):
        if not m.corpus:
            problems.append(f"data.mix[{i}].corpus is empty: name a preset, manifest or folder")
    weights = [cfg.data.weight, *(m.weight for m in cfg.data.mix)]
    if min(weights) < 0 or sum(weights) <= 0:
        problems.append(f"data.weight and data.mix weights must be >= 0 and not all 0, "
                        f"got {weights}")
    if cfg.data.split not in ("class", "speaker", "both"):
        problems.append(f"data.split must be 'class', 'speaker' or 'both', got {cfg.data.split!r}")
    for name in ("ways", "shots", "queries", "meta_batch"):
        if getattr(cfg.episodes, name) < 1:
            problems.append(f"episodes.{name} must be >= 1")
    problems += _open_set_problems(cfg)
    e = cfg.evaluation
    if e.episodes < 1 or e.queries < 1 or not e.shots or min(e.shots) < 1:
        problems.append("evaluation.episodes, evaluation.queries and every evaluation.shots "
                        "must be >= 1")
    if cfg.validation.episodes < 0 or e.max_steps < 0 or cfg.optim.max_nonfinite < 0:
        problems.append("validation.episodes, evaluation.max_steps and optim.max_nonfinite "
                        "must be >= 0")
    if cfg.optim.iterations < 0 or cfg.optim.warmup < 0 or cfg.optim.pretrain_iterations < 0:
        problems.append("optim.iterations, optim.warmup and optim.pretrain_iterations must "
                        "be >= 0")
    if cfg.optim.lr <= 0:
        problems.append(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.validation.every < 1 or cfg.validation.checkpoint_every < 1:
        problems.append("validation.every and validation.checkpoint_every must be >= 1")
    if (a.steps is not None and a.steps < 1) or (a.eval_steps is not None and a.eval_steps < 0):
        problems.append("algorithm.steps must be >= 1 and algorithm.eval_steps >= 0")
    bad = set(cfg.evaluation.baselines) - set(BASELINES)
    if bad:
        problems.append(f"evaluation.baselines: unknown {sorted(bad)}; "
                        f"choose from {', '.join(BASELINES)}")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    cfg.frontend_config()


def _open_set_problems(cfg: RunConfig) -> list[str]:
    """What is wrong with the open-set training keys (episodes.unknown_words ...,
    algorithm.cohort, validation.select_metric)."""
    from metavox.meta import ALGORITHMS

    ep, problems = cfg.episodes, []
    for name in ("unknown_words", "unknown_queries", "background_queries", "hard_pool",
                 "cohort"):
        where = "algorithm" if name == "cohort" else "episodes"
        value = getattr(cfg.algorithm if name == "cohort" else ep, name)
        if value < 0:
            problems.append(f"{where}.{name} must be >= 0, got {value}")
    if ep.unknown_words and ep.unknown_queries < 1:
        problems.append("episodes.unknown_queries must be >= 1 when episodes.unknown_words > 0")
    if not 0.0 <= ep.hard_negatives <= 1.0:
        problems.append(f"episodes.hard_negatives must be a probability in [0, 1], got "
                        f"{ep.hard_negatives}")
    if ep.confusable_file and not Path(ep.confusable_file).is_file():
        problems.append(f"episodes.confusable_file {ep.confusable_file} is not a file")
    spec = ALGORITHMS.get(cfg.algorithm.name)
    if (ep.unknown_words or ep.background_queries) and ep.protocol != "class":
        problems.append("episodes.unknown_words / background_queries need episodes.protocol "
                        "= 'class'")
    if cfg.algorithm.cohort and spec is not None and not spec.trains_rejection:
        problems.append(f"algorithm.cohort: {cfg.algorithm.name} takes no cohort")
    if cfg.validation.select_metric not in ("accuracy", "open_set"):
        problems.append(f"validation.select_metric must be 'accuracy' or 'open_set', got "
                        f"{cfg.validation.select_metric!r}")
    return problems


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003); the value is read as TOML,
    falling back to a plain string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with each ``key=value`` override set (tables created as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a table")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML config (or start from defaults), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{p}: not valid TOML ({err})") from None
    return config_from_dict(apply_overrides(data, list(overrides or [])))


def to_toml(data: dict[str, Any]) -> str:
    """Write plain config data as TOML (scalars, lists and nested tables)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + "}"
        raise ConfigError(f"cannot write {v!r} to TOML")

    def table(prefix: str, d: dict[str, Any]) -> None:
        d = {k: v for k, v in d.items() if v is not None}  # None: the default (TOML has no null)
        plain = {k: v for k, v in d.items() if not (isinstance(v, dict) and _is_section(prefix, k))}
        if prefix:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {scalar(v)}" for k, v in plain.items())
        for k, v in d.items():
            if k not in plain:
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_section(prefix: str, key: str) -> bool:
    """Nested dataclass sections become TOML tables; free-form dicts stay inline."""
    return prefix == "" and key in {f.name for f in dataclasses.fields(RunConfig)}
