"""Enrollment: teach a meta-trained model new words from a few recordings, save it, use it.

An examples folder holds ``{word}/*.wav`` (any format soundfile reads), 1–10 clips per
word. The clips go through the checkpoint's own front-end, the algorithm adapts to them,
and the adapted network is saved as a plain module (safetensors + JSON) that
``load_adapted`` rebuilds without the meta-learning machinery.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from metavox.audio.features import FrontendConfig, build_frontend
from metavox.audio.io import AudioError, load_clip
from metavox.meta.protonet import PrototypeClassifier
from metavox.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from metavox.train.config import config_from_dict
from metavox.train.run import LoadedModel
from metavox.train.setup import build_model

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MAX_CLIPS_PER_WORD = 10


class EnrollError(ValueError):
    """Examples that cannot be used for enrollment; the message says what would work."""


def featurize(paths: list[Path], frontend: FrontendConfig) -> Tensor:
    """``[n, 1, features, frames]`` for audio files, through ``frontend``."""
    module = build_frontend(frontend)
    waves = [load_clip(p, frontend.sample_rate, frontend.duration, trim=frontend.trim)
             for p in paths]
    with torch.no_grad():
        feats = module(torch.from_numpy(np.stack(waves)))
    return feats.unsqueeze(1)


def read_examples(folder: str | Path, frontend: FrontendConfig) -> tuple[Tensor, Tensor, list[str]]:
    """Support features, labels and word names from ``folder/{word}/*``.

    Unreadable clips are skipped with a warning; a word left with no clip, fewer than two
    words, or more than 10 clips for a word are errors.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EnrollError(f"examples folder {folder} does not exist")
    words = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if len(words) < 2:
        raise EnrollError(
            f"{folder} needs one sub-folder per word (at least 2), each with 1-10 recordings, "
            f"e.g. {folder}/lights/1.wav and {folder}/music/1.wav; found {words or 'none'}"
        )
    feats, labels = [], []
    for i, word in enumerate(words):
        files = sorted(p for p in (folder / word).iterdir()
                       if p.suffix.lower() in AUDIO_EXTENSIONS)
        good = []
        for p in files:
            try:
                feats_p = featurize([p], frontend)
            except AudioError as err:
                warnings.warn(f"skipping {p}: {err}", stacklevel=2)
                continue
            good.append(feats_p)
        if not good:
            raise EnrollError(f"word {word!r}: no readable recording in {folder / word} "
                              f"(looked for {', '.join(AUDIO_EXTENSIONS)})")
        if len(good) > MAX_CLIPS_PER_WORD:
            raise EnrollError(f"word {word!r}: {len(good)} recordings; give 1-10 per word")
        feats += good
        labels += [i] * len(good)
    return torch.cat(feats), torch.tensor(labels, dtype=torch.int64), words


@dataclass
class Adapted:
    """An adapted model ready to classify clips."""

    module: nn.Module
    classes: list[str]
    frontend: FrontendConfig

    def predict_files(self, paths: list[Path]) -> list[tuple[str, dict[str, float]]]:
        """The predicted word and every word's probability, per file."""
        x = featurize(paths, self.frontend)
        with torch.no_grad():
            probs = self.module(x)[:, : len(self.classes)].softmax(-1)
        out = []
        for row in probs:
            p = {c: float(v) for c, v in zip(self.classes, row, strict=True)}
            out.append((max(p, key=p.get), p))
        return out


def _kind(module: nn.Module) -> str:
    if isinstance(module, PrototypeClassifier):
        return "prototypes"
    if isinstance(module, nn.Sequential):
        return "sequential"
    return "model"


def enroll(loaded: LoadedModel, examples: str | Path, *, steps: int | None = None) -> Adapted:
    """Adapt ``loaded`` to the words in ``examples``."""
    x, y, words = read_examples(examples, loaded.frontend)
    head = int(loaded.meta.get("ways", len(words)))
    if loaded.config.algorithm.name != "protonet" and len(words) > head:
        raise EnrollError(
            f"this {loaded.config.algorithm.name} model was meta-trained for {head}-way tasks "
            f"and can learn at most {head} words at once; got {len(words)}. Enroll fewer "
            "words, or meta-train with episodes.ways set to the number you need (ProtoNet "
            "models take any number)"
        )
    kwargs = {"classes": words}
    if steps is not None:
        kwargs["steps"] = steps
    learner = loaded.algo.adapt(x, y, **kwargs)
    return Adapted(learner.to_module(), words, loaded.frontend)


def save_adapted(path: str | Path, adapted: Adapted, loaded: LoadedModel) -> Path:
    """Save an adapted model (plain module weights + what is needed to rebuild it)."""
    tensors = {f"module/{k}": v for k, v in adapted.module.state_dict().items()}
    meta = {"kind": "adapted", "module": _kind(adapted.module), "classes": adapted.classes,
            "frontend": adapted.frontend.to_dict(), "config": loaded.config.to_dict(),
            "ways": int(loaded.meta.get("ways", len(adapted.classes)))}
    return save_checkpoint(path, Checkpoint(tensors, meta))


def load_adapted(path: str | Path) -> Adapted:
    """Rebuild a model saved by :func:`save_adapted`."""
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("kind") != "adapted":
        raise CheckpointError(f"{path} is not an adapted model (run `metavox adapt` first); "
                              "it looks like a meta-training checkpoint")
    cfg = config_from_dict(ckpt.meta["config"])
    frontend = FrontendConfig.from_dict(ckpt.meta["frontend"])
    shape = (frontend.num_features, frontend.num_frames)
    model = build_model(cfg, shape, int(ckpt.meta["ways"]))
    state = ckpt.section("module")
    kind = ckpt.meta["module"]
    if kind == "prototypes":
        module: nn.Module = PrototypeClassifier(model.body, state["prototypes"].clone())
    elif kind == "sequential":
        module = nn.Sequential(model.body, model.head)
    else:
        module = model
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the stored model ({err})") from None
    return Adapted(module.eval(), list(ckpt.meta["classes"]), frontend)
