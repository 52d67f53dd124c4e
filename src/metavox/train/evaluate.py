"""Meta-test evaluation: a meta-trained model and the baselines on the same episodes.

Every method sees exactly the same test episodes (same sampler seed and indices), and each
accuracy is the mean over episodes with a 95% interval (1.96·σ/√n). Baselines that need
training — ProtoNet (episodic) and the pre-trained classifier behind fine-tuning — are
trained once on the run's own meta-training split and stored in the run folder
(``baselines/``), so later evaluations reuse them.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metavox.data import FeatureStore, load_corpus
from metavox.meta import MetaAlgorithm
from metavox.meta.baselines import FineTune
from metavox.train.checkpoint import load_checkpoint
from metavox.train.config import RunConfig
from metavox.train.distributed import SINGLE, Dist, from_environment, main_first
from metavox.train.loop import confidence_interval, evaluate_episodes
from metavox.train.pretrain import load_pretrained, pretrain_classifier, save_pretrained
from metavox.train.run import LoadedModel, load_trained, train
from metavox.train.setup import (
    autocast,
    build_feature_store,
    build_model,
    build_run_data,
    make_sampler,
    resolve_device,
)

BASELINES = ("protonet", "finetune", "scratch", "noadapt")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> list[dict[str, Any]]:
        """Rows ``method, shots, accuracy, ci95`` for printing."""
        return [{"method": s.method, "shots": s.shots, "accuracy": s.accuracy, "ci95": s.ci95}
                for s in self.scores]


def _bar(enabled: bool, desc: str):
    """A ``progress(done, total)`` callback drawing a tqdm bar, or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    state: dict = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True)
        state["bar"].update(done - state["bar"].n)
        if done >= total:
            state["bar"].close()

    return update


def _score(name: str, shots: int, per: dict[str, Any]) -> Score:
    mean, ci = confidence_interval(per["accuracy"])
    steps = {}
    for k, v in per.items():
        if k.startswith("accuracy@"):
            m, c = confidence_interval(v)
            steps[int(k.split("@")[1])] = [m, c]
    return Score(name, shots, mean, ci, int(len(per["accuracy"])), dict(sorted(steps.items())))


def test_store(loaded: LoadedModel, data: str | None, root: str | None,
               labels: list[str] | None, cache_dir: str | None) -> tuple[FeatureStore, str]:
    """The features of the meta-test classes: the run's own test split, or another corpus
    (optionally restricted to ``labels``) under the checkpoint's front-end."""
    cfg = loaded.config
    if data is None:
        run = build_run_data(cfg)
        store = run.parts["test"]
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
    return store, desc


def _baseline_protonet(loaded: LoadedModel, run_dir: Path, progress: bool) -> MetaAlgorithm:
    """A ProtoNet trained episodically on the run's meta-training split (cached)."""
    out = run_dir / "baselines" / "protonet"
    if not (out / "best.safetensors").is_file():
        cfg = copy.deepcopy(loaded.config)
        cfg.algorithm = replace(cfg.algorithm, name="protonet", options={})
        cfg.out = str(out)
        train(cfg, progress=progress)
    return load_trained(out).algo


def _pretrained_classifier(loaded: LoadedModel, run_dir: Path, progress: bool,
                           d: Dist = SINGLE):
    """The run's backbone trained as a plain classifier on all meta-training classes
    (by rank 0 when several ranks evaluate; the others load what it saved)."""
    with main_first(d):
        return _load_or_pretrain(loaded, run_dir, progress and d.main)


def _load_or_pretrain(loaded: LoadedModel, run_dir: Path, progress: bool):
    cfg = loaded.config
    path = run_dir / "baselines" / "pretrained.safetensors"
    run = None
    if path.is_file():
        classes = load_checkpoint(path).meta["pretrain_classes"]
        model = build_model(cfg, _input_shape(loaded), len(classes))
        return load_pretrained(path, model)
    run = build_run_data(cfg)
    store = run.parts["train"]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, _input_shape(loaded), len(set(store.labels)))
    e = cfg.evaluation
    model, classes = pretrain_classifier(model, store, iterations=e.pretrain_iterations,
                                         seed=cfg.seed, progress=progress)
    save_pretrained(path, model, classes, {"config": cfg.to_dict()})
    return model


def _input_shape(loaded: LoadedModel) -> tuple[int, int]:
    return (loaded.frontend.num_features, loaded.frontend.num_frames)


def build_baselines(loaded: LoadedModel, names: list[str], run_dir: Path,
                    progress: bool = False, d: Dist = SINGLE) -> dict[str, MetaAlgorithm]:
    """The requested baselines, trained if needed, ready to evaluate."""
    bad = sorted(set(names) - set(BASELINES))
    if bad:
        raise ValueError(f"unknown baseline(s) {bad}; choose from {list(BASELINES)}")
    e = loaded.config.evaluation
    out: dict[str, MetaAlgorithm] = {}
    if "protonet" in names:
        out["protonet"] = _baseline_protonet(loaded, run_dir, progress)
    if "finetune" in names:
        pre = _pretrained_classifier(loaded, run_dir, progress, d)
        out["finetune-head"] = FineTune(pre, mode="head", steps=e.finetune_steps,
                                        lr=e.finetune_lr)
        out["finetune-all"] = FineTune(pre, mode="all", steps=e.finetune_all_steps,
                                       lr=e.finetune_lr, body_lr=e.finetune_body_lr)
    if "scratch" in names:
        torch.manual_seed(loaded.config.seed + 11)
        fresh = build_model(loaded.config, _input_shape(loaded), loaded.config.episodes.ways)
        out["scratch"] = FineTune(fresh, mode="all", steps=e.finetune_all_steps,
                                  lr=e.finetune_lr, body_lr=e.scratch_lr)
    return out


class NoAdaptation:
    """The pre-trained classifier applied as it is, without looking at the support set.

    Only meaningful when the test classes are classes it was trained on (speaker
    adaptation: the same words, a new speaker). Each task's logits are restricted to the
    task's classes, found by name.
    """

    def __init__(self, model: torch.nn.Module, classes: list[str]) -> None:
        self.model = model.eval()
        self.column = {c: i for i, c in enumerate(classes)}

    def covers(self, labels: list[str]) -> bool:
        return set(labels) <= set(self.column)

    def evaluate(self, sampler, episodes: int, meta_batch: int, *,
                 device: torch.device | str = "cpu",
                 precision: str = "float32") -> dict[str, np.ndarray]:
        accs: list[float] = []
        b = 0
        self.model.to(device)
        with torch.no_grad(), autocast(device, precision):
            while len(accs) < episodes:
                batch = sampler.sample(meta_batch, b).to(device)
                for t in range(batch.num_tasks):
                    cols = [self.column[c] for c in batch.classes[t]]
                    logits = self.model(batch.query_x[t])[:, cols]
                    accs.append(float((logits.argmax(-1) == batch.query_y[t]).float().mean()))
                b += 1
        return {"accuracy": np.asarray(accs[:episodes])}


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
) -> EvalReport:
    """Evaluate a checkpoint and the baselines on the same meta-test episodes.

    ``device`` (default: the run's ``device`` setting, ``"auto"`` = CUDA when present) is
    where every method adapts; ``precision`` (default: the run's) ``"bfloat16"`` adapts
    under bfloat16 autocast. Under ``torchrun`` the episodes are sharded across the ranks
    and gathered, so every rank returns the single-process result (rank 0 trains any
    missing baseline cache).
    """
    d = from_environment()
    progress = progress and d.main
    loaded = load_trained(checkpoint)
    cfg: RunConfig = loaded.config
    dev = resolve_device(device or cfg.device)
    if dev.type == "cuda" and d.world > 1:
        dev = torch.device("cuda", d.local_rank)
    precision = precision or cfg.precision
    autocast(dev, precision)  # an unknown precision fails here, before any work
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
        store, desc = test_store(loaded, data, root, labels, cache_dir)

    methods: dict[str, MetaAlgorithm | NoAdaptation] = {cfg.algorithm.name: loaded.algo}
    methods.update(build_baselines(loaded, [n for n in names if n != "noadapt"], run_dir,
                                   progress, d))
    if "noadapt" in names:
        pre = _pretrained_classifier(loaded, run_dir, progress, d)
        classes = load_checkpoint(run_dir / "baselines" / "pretrained.safetensors").meta[
            "pretrain_classes"]
        noadapt = NoAdaptation(pre, classes)
        if noadapt.covers(sorted(set(store.labels))):
            methods["no adaptation"] = noadapt
    if max_steps and hasattr(loaded.algo, "eval_steps"):
        loaded.algo.record_steps = True
    headline_steps = getattr(loaded.algo, "eval_steps", None)
    scores: list[Score] = []
    ep_cfg = replace(cfg.episodes, ways=ways, queries=queries)
    for k in shots:
        sampler = make_sampler(store, ep_cfg, seed=cfg.seed, stream="test", shots=k)
        for name, algo in methods.items():
            if algo is loaded.algo and headline_steps is not None and max_steps:
                algo.eval_steps = max(headline_steps, max_steps)
            if isinstance(algo, NoAdaptation):
                scores.append(_score(name, k, algo.evaluate(
                    sampler, episodes, cfg.episodes.meta_batch, device=dev,
                    precision=precision)))
                continue
            bar = _bar(progress, f"evaluate {name} {k}-shot")
            per = evaluate_episodes(algo.to(dev), sampler, episodes,
                                    meta_batch=cfg.episodes.meta_batch, device=dev,
                                    progress=bar, dist=d, precision=precision)
            if algo is loaded.algo and headline_steps is not None and max_steps:
                algo.eval_steps = headline_steps
                per["accuracy"] = per.get(f"accuracy@{headline_steps}", per["accuracy"])
                per = {k2: v for k2, v in per.items()
                       if not k2.startswith("accuracy@") or int(k2[9:]) <= max_steps
                       } | {"accuracy": per["accuracy"]}
            scores.append(_score(name, k, per))
    return EvalReport(scores, ways, queries, episodes, cfg.seed, desc,
                      sorted(set(store.labels)), str(checkpoint), cfg.to_dict())
