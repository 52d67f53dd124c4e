"""Meta-test evaluation: a meta-trained model and the baselines on the same episodes.

Every method sees exactly the same test episodes (same sampler seed and indices), and each
accuracy is the mean over episodes with a 95% interval (1.96·σ/√n). The baselines are
built (and trained once, cached in the run folder) by :mod:`metavox.pipeline.baselines`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from metavox.data import FeatureStore, load_corpus
from metavox.engine import (
    EpisodeResults,
    autocast,
    confidence_interval,
    evaluate_episodes,
    resolve_device,
)
from metavox.engine.distributed import from_environment, main_first
from metavox.engine.openset_eval import score_pool, summarize
from metavox.meta import MetaAlgorithm
from metavox.pipeline.baselines import (
    NoAdaptation,
    build_baselines,
    pretrained_classes,
    pretrained_classifier,
)
from metavox.pipeline.build import build_feature_store, build_run_data, make_sampler
from metavox.pipeline.config import ConfigError, RunConfig
from metavox.pipeline.select import AdaptationSettings
from metavox.pipeline.train import LoadedModel, load_trained
from metavox.progress import progress_callback


@dataclass
class Score:
    """One method at one number of shots."""

    method: str
    shots: int
    accuracy: float
    ci95: float
    episodes: int
    by_step: dict[int, list[float]] = field(default_factory=dict)  # step -> [mean, ci95]


@dataclass
class OpenSetScore:
    """One method's clip-level open set at one number of shots
    (:class:`metavox.engine.openset_eval.OpenSetResult`)."""

    method: str
    shots: int
    detection: dict[str, list[float]]  # "1%" -> [mean, ci95]
    eer: list[float]  # [mean, ci95]
    episodes: int
    targets: int
    nontargets: int
    det: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class EvalReport:
    """All scores of one evaluation, with what produced them."""

    scores: list[Score]
    ways: int
    queries: int
    episodes: int
    seed: int
    data: str
    labels: list[str]
    checkpoint: str
    config: dict[str, Any]
    #: the meta-learner's test-time inner learning rate and steps and where each came from
    #: (:class:`~metavox.pipeline.select.AdaptationSettings`)
    adaptation: dict[str, Any] = field(default_factory=dict)
    #: clip-level open set per method and shots (:class:`OpenSetScore`), when measured
    open_set: list[OpenSetScore] = field(default_factory=list)
    #: what the open set's pool held: {"targets from": ..., "non-target words": [...], ...}
    open_set_pool: dict[str, Any] = field(default_factory=dict)

    def adaptation_line(self) -> str:
        """One sentence on the meta-learner's test-time adaptation settings."""
        if not self.adaptation:
            return ""
        return AdaptationSettings(**self.adaptation).describe()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> list[dict[str, Any]]:
        """Rows ``method, shots, accuracy, ci95`` for printing."""
        return [{"method": s.method, "shots": s.shots, "accuracy": s.accuracy, "ci95": s.ci95}
                for s in self.scores]


def _score(name: str, shots: int, res: EpisodeResults, *, headline_steps: int | None = None,
           max_steps: int | None = None) -> Score:
    """A table cell from per-episode results. With a recorded step curve, the headline
    accuracy is the one after ``headline_steps`` and the curve stops at ``max_steps``."""
    mean, ci = res.score()
    curve = res.accuracy_by_step
    steps: dict[int, list[float]] = {}
    if curve is not None:
        last = curve.shape[1] - 1 if max_steps is None else min(max_steps, curve.shape[1] - 1)
        steps = {s: list(confidence_interval(curve[:, s])) for s in range(last + 1)}
        if headline_steps is not None:
            mean, ci = confidence_interval(curve[:, headline_steps])
    return Score(name, shots, mean, ci, int(len(res.per_task["accuracy"])), steps)


def test_store(loaded: LoadedModel, data: str | None, root: str | None,
               labels: list[str] | None, cache_dir: str | None
               ) -> tuple[FeatureStore, str, FeatureStore | None]:
    """The features of the meta-test classes: the run's own test split, or another corpus
    (optionally restricted to ``labels``) under the checkpoint's front-end; and the run's
    validation split when the test split is the run's own (``None`` otherwise)."""
    cfg = loaded.config
    val = None
    if data is None:
        run = build_run_data(cfg)
        store, val = run.parts["test"], run.parts.get("val")
        desc = f"{cfg.data.corpus} (test split)"
    else:
        corpus = load_corpus(data, root)
        store = build_feature_store(corpus, loaded.frontend,
                                    cache_dir or cfg.data.cache_dir or None)
        desc = data if root is None else f"{data}:{root}"
    if labels:
        missing = sorted(set(labels) - set(store.labels))
        if missing:
            have = sorted(set(store.labels))
            raise ValueError(f"labels {missing} are not in {desc}; it has {have}")
        store = store.filter(labels=labels)
    return store, desc, val


BACKGROUND = "(background)"


@dataclass
class OpenSetPool:
    """The clips an open-set evaluation scores in every episode: the test store's rows
    first (the episodes' words), then the non-target extras."""

    x: torch.Tensor
    labels: list[str]
    test_words: list[str]
    other_words: list[str]
    backgrounds: int

    def describe(self, rule: str) -> dict[str, Any]:
        return {"clips": len(self.labels), "test words": self.test_words,
                "other words": self.other_words, "backgrounds": self.backgrounds,
                "rule": rule}


def open_set_pool(loaded: LoadedModel, store: FeatureStore, val: FeatureStore | None
                  ) -> OpenSetPool:
    """Targets and non-targets for the open set: every clip of the test words (``store``);
    every clip of the run's validation words (``val``, never trained on; ``None`` when
    testing on another corpus); and backgrounds: generated ones and up to 100 recordings
    from the background folders beside the corpus
    (:func:`metavox.pipeline.enroll.negative_pool`'s)."""
    from metavox.pipeline.enroll import builtin_negatives, corpus_backgrounds

    xs = [torch.from_numpy(store.take(range(len(store)))).unsqueeze(1)]
    labels = list(store.labels)
    other: list[str] = []
    if val is not None and len(val):
        xs.append(torch.from_numpy(val.take(range(len(val)))).unsqueeze(1))
        labels += list(val.labels)
        other = sorted(set(val.labels))
    backgrounds = [builtin_negatives(loaded.frontend)]
    recorded = corpus_backgrounds(loaded)
    if recorded is not None:
        backgrounds.append(recorded)
    n_bg = sum(len(b) for b in backgrounds)
    xs += backgrounds
    labels += [BACKGROUND] * n_bg
    return OpenSetPool(torch.cat(xs).float(), labels, sorted(set(store.labels)), other, n_bg)


def evaluate(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    root: str | None = None,
    labels: list[str] | None = None,
    ways: int | None = None,
    shots: list[int] | None = None,
    queries: int | None = None,
    episodes: int | None = None,
    max_steps: int | None = None,
    baselines: list[str] | None = None,
    cache_dir: str | None = None,
    progress: bool = False,
    device: str | None = None,
    precision: str | None = None,
    inner_lr: float | None = None,
    steps: int | None = None,
    open_set: bool | None = None,
) -> EvalReport:
    """Evaluate a checkpoint and the baselines on the same meta-test episodes.

    ``device`` (default: the run's ``device`` setting, ``"auto"`` = CUDA when present) is
    where every method adapts; ``precision`` (default: the run's) ``"bfloat16"`` adapts
    under bfloat16 autocast. Under ``torchrun`` the episodes are sharded across the ranks
    and gathered, so every rank returns the single-process result (rank 0 trains any
    missing baseline cache). The meta-learner adapts with ``inner_lr`` and ``steps`` (its
    inner steps; the headline accuracy is the one after them) where given, else with the
    settings chosen on validation, else the training config's; the report says which.
    ``open_set`` (default: ``evaluation.open_set``) also measures every adapting method's
    clip-level open set on the same episodes (:func:`open_set_pool`; on rank 0 only under
    ``torchrun``).
    """
    d = from_environment()
    progress = progress and d.main
    loaded = load_trained(checkpoint, inner_lr=inner_lr, steps=steps)
    cfg: RunConfig = loaded.config
    try:
        dev = resolve_device(device or cfg.device)
    except ValueError as err:
        raise ConfigError(f"--device: {err}") from None
    if dev.type == "cuda" and d.world > 1:
        dev = torch.device("cuda", d.local_rank)
    precision = precision or cfg.precision
    try:
        autocast(dev, precision)  # an unknown precision fails here, before any work
    except ValueError as err:
        raise ConfigError(f"--precision: {err}") from None
    e = cfg.evaluation
    ways = ways or cfg.episodes.ways
    queries = queries or e.queries
    episodes = episodes or e.episodes
    shots = shots or list(e.shots)
    max_steps = e.max_steps if max_steps is None else max_steps
    names = list(e.baselines if baselines is None else baselines)
    run_dir = Path(checkpoint)
    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    with main_first(d):
        store, desc, val = test_store(loaded, data, root, labels, cache_dir)
    open_set = e.open_set if open_set is None else open_set
    if open_set and cfg.episodes.protocol != "class":
        raise ConfigError("the open-set measurement needs word episodes "
                          f"(episodes.protocol = 'class'), not {cfg.episodes.protocol!r}")
    pool = open_set_pool(loaded, store, val) if open_set and d.main else None

    methods: dict[str, MetaAlgorithm | NoAdaptation] = {cfg.algorithm.name: loaded.algo}
    methods.update(build_baselines(loaded, [n for n in names if n != "noadapt"], run_dir,
                                   progress, d))
    if "noadapt" in names:
        noadapt = NoAdaptation(pretrained_classifier(loaded, run_dir, progress, d),
                               pretrained_classes(run_dir))
        if noadapt.covers(sorted(set(store.labels))):
            methods["no adaptation"] = noadapt
    # the meta-learner's curve of accuracy against inner steps comes from one longer
    # adaptation per episode; its headline is the accuracy after its own eval_steps
    headline = loaded.algo.eval().default_steps() or None  # None: no inner loop (ProtoNet)
    curve_steps = max(headline, max_steps) if headline is not None and max_steps else None
    scores: list[Score] = []
    open_scores: list[OpenSetScore] = []
    ep_cfg = replace(cfg.episodes, ways=ways, queries=queries)
    for k in shots:
        sampler = make_sampler(store, ep_cfg, seed=cfg.seed, stream="test", shots=k)
        for name, algo in methods.items():
            if isinstance(algo, NoAdaptation):
                res = algo.evaluate(sampler, episodes, cfg.episodes.meta_batch, device=dev,
                                    precision=precision)
                scores.append(_score(name, k, res))
                continue
            main = algo is loaded.algo and curve_steps is not None
            bar = progress_callback(f"evaluate {name} {k}-shot", "batch", enabled=progress)
            res = evaluate_episodes(algo.to(dev), sampler, episodes,
                                    meta_batch=cfg.episodes.meta_batch, device=dev,
                                    steps=curve_steps if main else None, record_steps=main,
                                    progress=bar, dist=d, precision=precision)
            scores.append(_score(name, k, res, headline_steps=headline if main else None,
                                 max_steps=max_steps if main else None))
            if pool is not None:
                bar = progress_callback(f"open set {name} {k}-shot", "episode",
                                        enabled=progress)
                got = score_pool(algo, sampler, pool.x, pool.labels, episodes,
                                 rule=e.open_set_rule, device=dev, progress=bar)
                r = summarize(got, boot=e.open_set_boot, seed=cfg.seed)
                open_scores.append(OpenSetScore(name, k, r.detection, r.eer, r.episodes,
                                                r.targets, r.nontargets, r.det))
    return EvalReport(scores, ways, queries, episodes, cfg.seed, desc,
                      sorted(set(store.labels)), str(checkpoint), cfg.to_dict(),
                      loaded.adaptation.to_dict(), open_scores,
                      pool.describe(e.open_set_rule) if pool is not None else {})
