"""The baselines every evaluation runs on the same episodes as the meta-learner.

- ``protonet``: ProtoNet trained episodically on the run's meta-training split;
- ``finetune``: a classifier pre-trained with ordinary mini-batches on all clips of the
  meta-training classes, whose head :class:`metavox.meta.FineTune` replaces per episode
  (``finetune-head``) or which it fine-tunes whole (``finetune-all``);
- ``scratch``: the same fine-tuning from an untrained network;
- ``noadapt``: the pre-trained classifier as it is (speaker adaptation only);
- ``centroid``: nearest class mean on the untrained backbone's features, no training at
  all: for a pretrained backbone (``speech-embedding``, ``mswc-resnet``), the frozen
  pretrained embedding with the nearest-centroid rule (the baseline any meta-learner on it
  has to beat); for ``fusion``, the plain concatenation of both bases' unit vectors.

What needs training is trained once and stored in the run folder (``baselines/``), so
later evaluations reuse it.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metavox.engine import EpisodeResults, autocast, pretrain_classifier
from metavox.engine.distributed import SINGLE, Dist, main_first
from metavox.meta import FineTune, MetaAlgorithm, ProtoNet
from metavox.meta.protonet import embedding_network
from metavox.pipeline.build import build_model, build_run_data
from metavox.pipeline.config import BASELINES, AlgorithmConfig
from metavox.pipeline.train import LoadedModel, load_trained, train
from metavox.storage import Checkpoint, load_checkpoint, save_checkpoint


def save_pretrained(path: str | Path, model: nn.Module, classes: list[str], meta: dict) -> Path:
    """Store a pre-trained classifier (safetensors + JSON metadata)."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    return save_checkpoint(path, Checkpoint(tensors, {**meta, "kind": "pretrained",
                                                      "pretrain_classes": classes}))


def load_pretrained(path: str | Path, model: nn.Module) -> nn.Module:
    """Load weights saved by :func:`save_pretrained` into ``model``."""
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt.section("model"))
    return model.eval()


def _baseline_protonet(loaded: LoadedModel, run_dir: Path, progress: bool) -> MetaAlgorithm:
    """A ProtoNet trained episodically on the run's meta-training split (cached); on a
    frozen body (every weight of its embedding network fixed, e.g. a pretrained base with
    no adapter) there is nothing to meta-train, and it is the nearest class mean in the
    frozen features by squared Euclidean distance, as it comes."""
    body = embedding_network(loaded.algo.model)
    if not any(p.requires_grad for p in body.parameters()):
        return ProtoNet(copy.deepcopy(loaded.algo.model)).eval()
    out = run_dir / "baselines" / "protonet"
    if not (out / "best.safetensors").is_file():
        cfg = copy.deepcopy(loaded.config)
        a = cfg.algorithm  # ProtoNet has no inner loop: only the batching settings carry over
        cfg.algorithm = AlgorithmConfig(name="protonet", strategy=a.strategy,
                                        chunk_size=a.chunk_size)
        cfg.validation = replace(cfg.validation, select_inner_lr=[], select_eval_steps=[])
        cfg.out = str(out)
        train(cfg, progress=progress)
    return load_trained(out).algo


def pretrained_classifier(loaded: LoadedModel, run_dir: Path, progress: bool,
                           d: Dist = SINGLE):
    """The run's backbone trained as a plain classifier on all meta-training classes
    (by rank 0 when several ranks evaluate; the others load what it saved)."""
    with main_first(d):
        return _load_or_pretrain(loaded, run_dir, progress and d.main)


def pretrained_classes(run_dir: Path) -> list[str]:
    """The classes of the run's pre-trained classifier, in its output order."""
    return list(load_checkpoint(_pretrained_path(run_dir)).meta["pretrain_classes"])


def _pretrained_path(run_dir: Path) -> Path:
    return run_dir / "baselines" / "pretrained.safetensors"


def _load_or_pretrain(loaded: LoadedModel, run_dir: Path, progress: bool):
    cfg = loaded.config
    path = _pretrained_path(run_dir)
    if path.is_file():
        model = build_model(cfg, _input_shape(loaded), len(pretrained_classes(run_dir)))
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
        pre = pretrained_classifier(loaded, run_dir, progress, d)
        out["finetune-head"] = FineTune(pre, mode="head", steps=e.finetune_steps,
                                        inner_lr=e.finetune_lr)
        out["finetune-all"] = FineTune(pre, mode="all", steps=e.finetune_all_steps,
                                       inner_lr=e.finetune_lr, body_lr=e.finetune_body_lr)
    if "centroid" in names:  # no training: the backbone's features as they come
        torch.manual_seed(loaded.config.seed + 13)
        fresh = build_model(loaded.config, _input_shape(loaded), loaded.config.episodes.ways)
        out["nearest centroid"] = ProtoNet(fresh)
    if "scratch" in names:
        torch.manual_seed(loaded.config.seed + 11)
        fresh = build_model(loaded.config, _input_shape(loaded), loaded.config.episodes.ways)
        out["scratch"] = FineTune(fresh, mode="all", steps=e.finetune_all_steps,
                                  inner_lr=e.finetune_lr, body_lr=e.scratch_lr)
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
                 precision: str = "float32") -> EpisodeResults:
        """Query accuracy on episodes ``0..episodes-1`` of ``sampler``."""
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
        return EpisodeResults({"accuracy": np.asarray(accs[:episodes])})
