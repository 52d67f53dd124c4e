"""From a run config to the objects a run needs: corpus, split, feature stores, samplers,
backbone and algorithm (the composition root). Shared by training, evaluation and the
CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from metavox.audio.features import FrontendConfig
from metavox.data import (
    ClassEpisodeSampler,
    Corpus,
    FeatureStore,
    SpeakerEpisodeSampler,
    Split,
    build_feature_store,
    load_corpus,
    make_split,
)
from metavox.data.episodes import (
    EpisodeSampler,
    MixtureSampler,
    OpenSetEpisodeSampler,
    TaskSource,
)
from metavox.engine.precision import resolve_device
from metavox.meta import MetaAlgorithm, create_algorithm
from metavox.models import create_model
from metavox.pipeline.config import AugmentConfig, ConfigError, EpisodeConfig, RunConfig

#: Seed offsets so train, validation and test episodes never share a stream.
STREAM = {"train": 0, "val": 1_000_003, "test": 2_000_003}


def run_device(cfg: RunConfig) -> torch.device:
    """The device the config names (``device``), as a :class:`ConfigError` if unusable."""
    try:
        return resolve_device(cfg.device)
    except ValueError as err:
        raise ConfigError(f"device: {err}") from None


def load_run_corpus(cfg: RunConfig) -> Corpus:
    """The corpus the config names; ``"synth"`` builds the built-in corpus if needed."""
    return corpus_from_spec(cfg.data.corpus, cfg.data.root, "data")


def corpus_from_spec(spec: str, root: str, where: str) -> Corpus:
    """A corpus named as in ``[data]`` (``where`` names the section in errors)."""
    if spec == "synth":
        from metavox.data.synth import ensure_default_corpus

        if root:  # a synthetic corpus made elsewhere (any settings): read it
            manifest = Path(root) / "manifest.csv"
            if not manifest.is_file():
                raise ConfigError(f"{where}.root {root} holds no synthetic corpus "
                                  "(no manifest.csv); run `metavox data synth` first")
            return load_corpus(str(manifest))
        return load_corpus(str(Path(ensure_default_corpus()) / "manifest.csv"))
    return load_corpus(spec, root or None)


def make_run_split(cfg: RunConfig, corpus: Corpus) -> Split:
    """The saved split the config points to, else one made from its settings."""
    d = cfg.data
    if d.split_file:
        return Split.load(d.split_file)
    fractions = {"train": 1.0 - d.val_fraction - d.test_fraction, "val": d.val_fraction,
                 "test": d.test_fraction}
    labels, speakers = {}, {}
    if d.test_labels:
        labels["test"] = list(d.test_labels)
    if d.val_labels:
        labels["val"] = list(d.val_labels)
    if d.test_speakers:
        speakers["test"] = list(d.test_speakers)
    if d.val_speakers:
        speakers["val"] = list(d.val_speakers)
    try:
        return make_split(corpus, d.split, fractions, labels=labels or None,
                          speakers=speakers or None, seed=cfg.seed)
    except ValueError as err:
        raise ConfigError(f"[data] split: {err}") from None


@dataclass
class RunData:
    """A corpus's features, split into parts; and the training features of the corpora
    mixed into meta-training, with their weights."""

    corpus: Corpus
    split: Split
    frontend: FrontendConfig
    store: FeatureStore
    parts: dict[str, FeatureStore]
    mix: list[tuple[FeatureStore, float]] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, int]:
        return (self.frontend.num_features, self.frontend.num_frames)


def build_run_data(cfg: RunConfig, *, progress: bool = False) -> RunData:
    """Corpus, split and cached features for each part of the split."""
    corpus = load_run_corpus(cfg)
    split = make_run_split(cfg, corpus)
    frontend = cfg.frontend_config()
    workers = cfg.data.feature_workers or None
    store = build_feature_store(corpus, frontend, cfg.data.cache_dir or None, workers=workers,
                                progress=progress)
    parts = {}
    for name in split.names:
        part = split.part(name)
        parts[name] = store.filter(labels=part.labels, speakers=part.speakers)
    held_out = {x for name in ("val", "test") if name in parts for x in parts[name].labels}
    mix = []
    for i, m in enumerate(cfg.data.mix):
        extra = build_feature_store(corpus_from_spec(m.corpus, m.root, f"data.mix[{i}]"),
                                    frontend, cfg.data.cache_dir or None, workers=workers,
                                    progress=progress)
        keep = sorted(set(extra.labels) - held_out)
        if not keep:
            raise ConfigError(f"data.mix[{i}] ({m.corpus}): every class is a validation or "
                              "test class of the run, so none is left to train on")
        mix.append((extra.filter(labels=keep), m.weight))
    return RunData(corpus, split, frontend, store, parts, mix)


def spec_augmenter(cfg: AugmentConfig):
    """``augment(x, rng)`` for a sampler, or None when SpecAugment is off."""
    if not cfg.spec_augment:
        return None
    from metavox.audio.augment import spec_augment

    def augment(x, rng):
        return spec_augment(x, freq_masks=cfg.freq_masks, freq_width=cfg.freq_width,
                            time_masks=cfg.time_masks, time_width=cfg.time_width, generator=rng)

    return augment


def make_sampler(
    store: FeatureStore,
    episodes: EpisodeConfig,
    *,
    seed: int,
    stream: str,
    shots: int | None = None,
    ways: int | None = None,
    augment: AugmentConfig | None = None,
) -> EpisodeSampler:
    """An episode sampler of the configured protocol over ``store``; ``augment`` applies to
    the training stream only."""
    ways = episodes.ways if ways is None else ways
    shots = episodes.shots if shots is None else shots
    s = seed + STREAM[stream]
    aug = spec_augmenter(augment) if augment is not None and stream == "train" else None
    if episodes.protocol == "speaker":
        return SpeakerEpisodeSampler(store, ways, shots, episodes.queries, seed=s, augment=aug)
    # meta-training may skip classes too small for K+Q; meta-test must not
    too_few = "raise" if stream == "test" else "drop"
    return ClassEpisodeSampler(store, ways, shots, episodes.queries, seed=s,
                               speaker_disjoint=episodes.speaker_disjoint, too_few=too_few,
                               augment=aug)


def open_set_training(cfg: RunConfig) -> bool:
    """Whether the config asks for open-set training episodes (unknown queries) for an
    algorithm that trains rejection. Others (the ProtoNet baseline an evaluation trains
    from a rejecting run's config) get the closed-set episodes of the same words."""
    from metavox.meta import ALGORITHMS

    spec = ALGORITHMS.get(cfg.algorithm.name)
    return (spec is not None and spec.trains_rejection
            and bool(cfg.episodes.unknown_words or cfg.episodes.background_queries))


def run_backgrounds_for(cfg: RunConfig, frontend: FrontendConfig):
    """``[B, F, T]`` features of the backgrounds an open-set task draws from: generated
    noises and silence and the corpus's background recordings, as enrollment calibrates
    on (:func:`metavox.pipeline.enroll.run_backgrounds`)."""
    from types import SimpleNamespace

    from metavox.pipeline.enroll import run_backgrounds

    return run_backgrounds(SimpleNamespace(config=cfg, frontend=frontend)).squeeze(1).numpy()


def confusable_table(cfg: RunConfig) -> dict[str, list[str]] | None:
    """``episodes.confusable_file`` read (JSON: word -> list of near-homophones)."""
    import json

    path = cfg.episodes.confusable_file
    if not path:
        return None
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"episodes.confusable_file {path}: {err}") from None
    if not isinstance(table, dict) or not all(
            isinstance(v, list) and all(isinstance(w, str) for w in v) for v in table.values()):
        raise ConfigError(f"episodes.confusable_file {path}: need a JSON object mapping each "
                          "word to a list of words")
    return table


def open_set_sampler(store: FeatureStore, cfg: RunConfig, *, seed: int, backgrounds,
                     augment: AugmentConfig | None = None) -> OpenSetEpisodeSampler:
    """Training episodes with unknown words and backgrounds among the queries (see
    :class:`~metavox.data.episodes.OpenSetEpisodeSampler` and ``[episodes]``)."""
    e = cfg.episodes
    aug = spec_augmenter(augment) if augment is not None else None
    return OpenSetEpisodeSampler(
        store, e.ways, e.shots, e.queries, unknown_words=e.unknown_words,
        unknown_queries=e.unknown_queries, backgrounds=backgrounds,
        background_queries=e.background_queries, hard_negatives=e.hard_negatives,
        hard_pool=e.hard_pool, confusable=confusable_table(cfg),
        seed=seed + STREAM["train"], speaker_disjoint=e.speaker_disjoint, too_few="drop",
        augment=aug)


def training_sampler(cfg: RunConfig, data: RunData) -> TaskSource:
    """The meta-training episodes: the run's training part, mixed with the ``[[data.mix]]``
    corpora by their weights when there are any; open-set episodes (every corpus's) when
    ``[episodes]`` asks for unknowns."""
    if open_set_training(cfg):
        bg = run_backgrounds_for(cfg, data.frontend) if cfg.episodes.background_queries \
            else None
        samplers = [open_set_sampler(store, cfg, seed=cfg.seed + 7919 * i, backgrounds=bg,
                                     augment=cfg.augment)
                    for i, store in enumerate([data.parts["train"],
                                               *(m for m, _ in data.mix)])]
        if not data.mix:
            return samplers[0]
        return MixtureSampler(samplers, [cfg.data.weight, *(w for _, w in data.mix)],
                              seed=cfg.seed + STREAM["train"])
    own = make_sampler(data.parts["train"], cfg.episodes, seed=cfg.seed, stream="train",
                       augment=cfg.augment)
    if not data.mix:
        return own
    extra = [make_sampler(store, cfg.episodes, seed=cfg.seed + 7919 * (i + 1), stream="train",
                          augment=cfg.augment) for i, (store, _) in enumerate(data.mix)]
    return MixtureSampler([own, *extra], [cfg.data.weight, *(w for _, w in data.mix)],
                          seed=cfg.seed + STREAM["train"])


def build_model(cfg: RunConfig, input_shape: tuple[int, int], num_classes: int) -> nn.Module:
    """The configured backbone with ``num_classes`` outputs."""
    try:
        return create_model(cfg.model.name, num_classes=num_classes, input_shape=input_shape,
                            **cfg.model.options)
    except TypeError as err:
        raise ConfigError(f"[model] options: {err}") from None


def build_algorithm(cfg: RunConfig, model: nn.Module) -> MetaAlgorithm:
    """The configured algorithm around ``model``, through the algorithm registry: every
    setting is passed on, and one the algorithm does not take is a :class:`ConfigError`."""
    a = cfg.algorithm
    common = {"strategy": a.strategy, "chunk_size": a.chunk_size or None}
    if a.first_order is not None:
        common["first_order"] = a.first_order
    twice = sorted(set(common) & set(a.options))
    if twice:
        raise ConfigError(f"[algorithm] {twice} given both as keys and in `options`")
    try:
        return create_algorithm(a.name, model, inner_lr=a.inner_lr, steps=a.steps,
                                eval_steps=a.eval_steps, **common, **a.options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[algorithm] {err}") from None
