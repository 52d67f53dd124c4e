"""Enrollment: teach a meta-trained model new words from a few recordings, save it, use it.

An examples folder holds ``{word}/*.wav`` (any format soundfile reads), 1–10 clips per
word. The clips go through the checkpoint's own front-end, the algorithm adapts to them,
and the learner it returns is saved (safetensors + JSON, see :class:`metavox.meta.Learner`)
with the run config, so ``load_adapted`` rebuilds it without the meta-learning machinery.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metavox.audio.features import FrontendConfig, build_frontend
from metavox.audio.io import AudioError, load_clip
from metavox.meta import Learner
from metavox.pipeline.train import LoadedModel, rebuild_model
from metavox.storage import CheckpointError, load_checkpoint

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
    """An adapted model (a :class:`~metavox.meta.Learner`) with the front-end its clips
    go through."""

    learner: Learner
    frontend: FrontendConfig

    @property
    def classes(self) -> list[str]:
        return list(self.learner.classes or [])

    def predict_files(self, paths: list[Path]) -> list[tuple[str, dict[str, float]]]:
        """The predicted word and every word's probability, per file."""
        x = featurize(paths, self.frontend)
        probs = self.learner(x)[:, : len(self.classes)].softmax(-1)
        out = []
        for row in probs:
            p = {c: float(v) for c, v in zip(self.classes, row, strict=True)}
            out.append((max(p, key=p.get), p))
        return out


def enroll(loaded: LoadedModel, examples: str | Path, *, steps: int | None = None) -> Adapted:
    """Adapt ``loaded`` to the words in ``examples``."""
    x, y, words = read_examples(examples, loaded.frontend)
    head = int(loaded.meta.get("ways", len(words)))
    if loaded.algo.fixed_ways and len(words) > head:
        raise EnrollError(
            f"this {loaded.config.algorithm.name} model was meta-trained for {head}-way tasks "
            f"and can learn at most {head} words at once; got {len(words)}. Enroll fewer "
            "words, or meta-train with episodes.ways set to the number you need (ProtoNet "
            "models take any number)"
        )
    return Adapted(loaded.algo.adapt(x, y, steps=steps, classes=words), loaded.frontend)


def save_adapted(path: str | Path, adapted: Adapted, loaded: LoadedModel) -> Path:
    """Save an adapted model: the learner, plus the run config and front-end that rebuild
    its base model and featurise new clips."""
    return adapted.learner.save(path, meta={
        "frontend": adapted.frontend.to_dict(), "config": loaded.config.to_dict(),
        "ways": int(loaded.meta.get("ways", len(adapted.classes)))})


def load_adapted(path: str | Path) -> Adapted:
    """Rebuild a model saved by :func:`save_adapted`."""
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("kind") != Learner.FORMAT_KIND:
        raise CheckpointError(f"{path} is not an adapted model (run `metavox adapt` first); "
                              "it looks like a meta-training checkpoint")
    model, _, frontend = rebuild_model(ckpt, path)
    return Adapted(Learner.from_checkpoint(ckpt, model, source=str(path)), frontend)
