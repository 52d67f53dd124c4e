"""Enrollment: teach a meta-trained model new words from a few recordings, save it, use it.

An examples folder holds ``{word}/*.wav`` (any format soundfile reads), 1–10 clips per
word. The clips go through the checkpoint's own front-end, the algorithm adapts to them,
and the learner it returns is saved (safetensors + JSON, see :class:`metavox.meta.Learner`)
with the run config, so ``load_adapted`` rebuilds it without the meta-learning machinery.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metavox.audio.augment import NOISES, background_noise
from metavox.audio.features import FrontendConfig, shared_frontend
from metavox.audio.io import AudioError, fit_clip, load_audio
from metavox.meta import Learner
from metavox.meta.openset import OpenSet, spread_of, threshold_for
from metavox.pipeline.expect import Evidence, Expectations, expectations, held_out_values
from metavox.pipeline.train import LoadedModel, rebuild_model
from metavox.storage import CheckpointError, load_checkpoint

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
MAX_CLIPS_PER_WORD = 10


class EnrollError(ValueError):
    """Examples that cannot be used for enrollment; the message says what would work."""


def featurize(paths: list[Path], frontend: FrontendConfig) -> Tensor:
    """``[n, 1, features, frames]`` for audio files, through ``frontend``."""
    return featurize_waves([load_audio(p, frontend.sample_rate) for p in paths], frontend)


def featurize_waves(waves: list[np.ndarray], frontend: FrontendConfig) -> Tensor:
    """``[n, 1, features, frames]`` for decoded mono clips at ``frontend.sample_rate``:
    trimmed if the front-end says so, cut or padded to its duration, as files are."""
    clips = [fit_clip(w, frontend.sample_rate, frontend.duration, trim=frontend.trim)
             for w in waves]
    with torch.no_grad():
        return shared_frontend(frontend)(torch.from_numpy(np.stack(clips))).unsqueeze(1)


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
                warnings.warn(f"skipping {p}: {err.problem}", stacklevel=2)
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


UNKNOWN = "unknown"


@dataclass
class Adapted:
    """An adapted model (a :class:`~metavox.meta.Learner`) with the front-end its clips
    go through and its open-set rule (the default accepts everything); ``evidence``: what
    :meth:`expectations` are computed from, when enrollment was asked for them."""

    learner: Learner
    frontend: FrontendConfig
    open_set: OpenSet = OpenSet()
    evidence: Evidence | None = field(default=None, compare=False, repr=False)
    #: the stage-1 rule of a stream cascade (heavy bases: :class:`metavox.kws.cascade.Stage1`
    #: as JSON), saved with the model; ``None``: none set
    cascade: dict | None = None

    def expectations(self) -> Expectations | None:
        """Warnings and per-word expected detection and false accepts at the current
        open-set rule (see :mod:`metavox.pipeline.expect`); ``None`` without evidence."""
        if self.evidence is None:
            return None
        return expectations(self.evidence, self.classes, self.open_set)

    @property
    def classes(self) -> list[str]:
        return list(self.learner.classes or [])

    def logits(self, x: Tensor) -> Tensor:
        """``[N, words]`` logits of features ``x`` (``[N, 1, features, frames]``)."""
        return self.learner(x)[:, : len(self.classes)]

    def values(self, x: Tensor, open_set: OpenSet | None = None) -> Tensor:
        """``[N, words]``: every word's open-set score (by ``open_set``, default this
        model's rule); the best is compared with the threshold."""
        return self.logits_and_values(x, open_set)[1]

    def logits_and_values(self, x: Tensor, open_set: OpenSet | None = None
                          ) -> tuple[Tensor, Tensor]:
        """:meth:`logits` and :meth:`values` of ``x`` from one pass of the model."""
        rule = open_set or self.open_set
        logits = self.logits(x)
        features = self.learner.features(x) if rule.rule == "background" else None
        return logits, rule.values(logits, features)

    def predict(self, x: Tensor) -> list[tuple[str, dict[str, float], float]]:
        """Per input of features ``x``: the recognised word (or ``"unknown"``, by the
        open-set rule), every word's probability, and the best word's open-set score."""
        logits, values = self.logits_and_values(x)
        decided, score = self.open_set.decide(values)
        out = []
        for row, k, v in zip(logits.softmax(-1), decided.tolist(), score.tolist(), strict=True):
            p = {c: float(q) for c, q in zip(self.classes, row, strict=True)}
            out.append((self.classes[k] if k >= 0 else UNKNOWN, p, float(v)))
        return out

    def predict_files(self, paths: list[Path]) -> list[tuple[str, dict[str, float]]]:
        """The recognised word (or ``"unknown"``) and every word's probability, per file
        (see :meth:`predict`)."""
        return [(w, p) for w, p, _ in self.predict(featurize(paths, self.frontend))]


def builtin_negatives(frontend: FrontendConfig, *, per_kind: int = 8, seed: int = 0) -> Tensor:
    """Features of generated backgrounds (every kind of :data:`NOISES`, at levels from
    faint to loud, and digital silence): negatives that need no data."""
    rng = np.random.default_rng([seed, 11])
    n = frontend.num_samples
    waves = [background_noise(kind, n, frontend.sample_rate, rng, level=float(level))
             for kind in NOISES for level in np.geomspace(0.003, 0.3, per_kind)]
    # exact zeros (a muted or starting microphone, padding) sit on the front-end's floor,
    # unlike any noise; two copies, so that the background rule's bank and calibration
    # halves (see negative_scores) are both likely to hold one
    waves += [np.zeros(n, np.float32)] * 2
    with torch.no_grad():
        return shared_frontend(frontend)(torch.from_numpy(np.stack(waves))).unsqueeze(1)


def other_training_words(loaded: LoadedModel, exclude: list[str] | None = None):
    """``(run data, labels)``: the run's data and its meta-training words other than
    ``exclude`` (compared without case; the words being enrolled), the source of negatives
    with speech in them; ``None`` when the run's corpus is not at hand or no word is left."""
    from metavox.data import CorpusError
    from metavox.pipeline.build import build_run_data
    from metavox.pipeline.config import ConfigError

    try:
        data = build_run_data(loaded.config)
        train = data.parts["train"]
    except (CorpusError, ConfigError, OSError, KeyError):
        return None
    own = {w.casefold() for w in exclude or []}
    keep = sorted({x for x in train.labels if x.casefold() not in own})
    return (data, keep) if keep else None


def corpus_negatives(loaded: LoadedModel, *, exclude: list[str] | None = None,
                     limit: int = 600, seed: int = 0) -> Tensor | None:
    """Features of up to ``limit`` clips of :func:`other_training_words`, from the run's
    feature cache; ``None`` when the run's corpus is not at hand."""
    found = other_training_words(loaded, exclude)
    if found is None:
        return None
    data, keep = found
    store = data.parts["train"].filter(labels=keep)
    rows = np.random.default_rng([seed, 12]).permutation(len(store))[:limit]
    return torch.from_numpy(store.take(np.sort(rows))).unsqueeze(1)


#: folders beside a corpus's words that hold only background sound (Speech Commands)
BACKGROUND_FOLDERS = ("_silence_", "_background_noise_")


def corpus_backgrounds(loaded: LoadedModel, *, limit: int = 100, seed: int = 0
                       ) -> Tensor | None:
    """Features of up to ``limit`` recordings from the background folders beside the
    run's corpora (:data:`BACKGROUND_FOLDERS`: real rooms, taps, machines, where the
    generated noises are synthetic), each made a clip as a word's recording is, through
    the run's feature cache (computed once); ``None``
    when there are none. Unreadable files are skipped, as the cache skips them."""
    from metavox.data import Corpus, Utterance, build_feature_store

    d = loaded.config.data
    utts = [Utterance(str(f), name, None) for root in (d.root, *(m.root for m in d.mix))
            if root for name in BACKGROUND_FOLDERS if (Path(root) / name).is_dir()
            for f in sorted((Path(root) / name).iterdir())
            if f.suffix.lower() in AUDIO_EXTENSIONS]
    if not utts:
        return None
    chosen = np.sort(np.random.default_rng([seed, 14]).permutation(len(utts))[:limit])
    picked = tuple(utts[i] for i in chosen)
    root = os.path.commonpath([os.path.dirname(u.path) for u in picked])
    corpus = Corpus(picked, root, "backgrounds", "background folders")
    store = build_feature_store(corpus, loaded.frontend, d.cache_dir or None)
    if not len(store):
        return None
    return torch.from_numpy(store.take(np.arange(len(store)))).unsqueeze(1)


def negative_pool(loaded: LoadedModel, *, exclude: list[str] | None = None,
                  backgrounds: Tensor | None = None) -> list[Tensor | None]:
    """The negatives an enrollment is calibrated on, as feature batches: backgrounds
    (generated, :func:`builtin_negatives`, and recorded, :func:`corpus_backgrounds`;
    pass ``backgrounds`` when they are already made: they do not depend on the words)
    and the run's meta-training words other than ``exclude``
    (:func:`corpus_negatives`)."""
    seed = loaded.config.seed
    if backgrounds is None:
        backgrounds = run_backgrounds(loaded)
    return [backgrounds, corpus_negatives(loaded, exclude=exclude, seed=seed)]


def run_backgrounds(loaded: LoadedModel) -> Tensor:
    """Generated and recorded backgrounds for ``loaded`` (see :func:`negative_pool`)."""
    seed = loaded.config.seed
    made = [builtin_negatives(loaded.frontend, seed=seed),
            corpus_backgrounds(loaded, seed=seed)]
    return torch.cat([m for m in made if m is not None])


def default_rule(loaded: LoadedModel) -> str:
    """The open-set rule an enrollment uses unless told otherwise: ``"learned"`` for an
    algorithm trained to reject (its output already is the word's score against the
    task's unknown), else ``"logit"`` (the distance to the word's prototype). Measured on
    protocol streams, both tell enrolled words from other words far better than the
    ``"background"`` rule, which also scores a word against the nearest negative clip
    (docs/kws.md, "None of these")."""
    from metavox.meta import ALGORITHMS

    spec = ALGORITHMS.get(loaded.config.algorithm.name)
    return "learned" if spec is not None and spec.trains_rejection else "logit"


def negative_scores(adapted: Adapted, negatives: list[Tensor | None], *,
                    rule: str = "logit", seed: int = 0) -> tuple[Tensor, Tensor]:
    """The negatives' best open-set scores under ``rule`` for ``adapted``, and the
    bank of their embeddings (see :func:`negative_values`)."""
    values, bank = negative_values(adapted, negatives, rule=rule, seed=seed)
    return values.max(-1).values, bank


def negative_values(adapted: Adapted, negatives: list[Tensor | None], *,
                    rule: str = "logit", seed: int = 0) -> tuple[Tensor, Tensor]:
    """The negatives' open-set scores ``[n, words]`` under ``rule`` for ``adapted``, and
    a bank of negatives' embeddings by the adapted model, kept with the open set for
    every rule (the cascade's stage 1 is calibrated on it,
    :func:`metavox.kws.cascade.calibrate_stage1`). For the background rule, whose scores
    use the bank, the negatives (feature batches ``[n, 1, features, frames]``) are
    shuffled and split in two: one half's embeddings are the bank, the other half is
    scored; for the other rules every negative is both."""
    x = torch.cat([n for n in negatives if n is not None and len(n)])
    bank_x = x
    if rule == "background":
        order = torch.from_numpy(np.random.default_rng([seed, 13]).permutation(len(x)))
        bank_x, x = x[order[::2]], x[order[1::2]]
    bank = torch.cat([adapted.learner.features(bank_x[i:i + 256])
                      for i in range(0, len(bank_x), 256)])
    probe = OpenSet(rule, background=bank)
    values = torch.cat([adapted.values(x[i:i + 256], probe)
                        for i in range(0, len(x), 256)])
    return values, bank


def calibrate_open_set(adapted: Adapted, negatives: list[Tensor | None], *, far: float,
                       rule: str = "logit", seed: int = 0) -> OpenSet:
    """The open-set rule for ``adapted`` accepting at most ``far`` of the ``negatives``
    (see :func:`negative_scores`)."""
    values, bank = negative_values(adapted, negatives, rule=rule, seed=seed)
    return open_set_from(values, bank, far=far, rule=rule)


def open_set_from(values: Tensor, bank: Tensor | None, *, far: float,
                  rule: str = "logit") -> OpenSet:
    """The open-set rule accepting at most ``far`` of negatives whose scores ``values``
    ``[n, words]`` and bank are :func:`negative_values`'s."""
    scores = values.max(-1).values
    return OpenSet(rule, threshold_for(scores, far), far, len(scores), background=bank,
                   spread=spread_of(scores))


def word_limit(loaded: LoadedModel) -> int | None:
    """How many words ``loaded`` can learn at once (``None``: any number): a head whose
    initialisation is meta-learned has the meta-training tasks' ``ways`` rows."""
    return int(loaded.meta.get("ways", 0)) or None if loaded.algo.fixed_ways else None


def check_word_count(loaded: LoadedModel, words: int) -> None:
    """:class:`EnrollError` when ``loaded`` cannot learn ``words`` words at once."""
    limit = word_limit(loaded)
    if limit is not None and words > limit:
        raise EnrollError(
            f"this {loaded.config.algorithm.name} model was meta-trained for {limit}-way tasks "
            f"and can learn at most {limit} words at once; got {words}. Enroll fewer "
            "words, or meta-train with episodes.ways set to the number you need (ProtoNet "
            "and prototype-headed MAML models take any number)"
        )


def enroll(loaded: LoadedModel, examples: str | Path, *, steps: int | None = None,
           far: float | None = None, rule: str | None = None,
           negatives: str | Path | None = None, expect: bool = False) -> Adapted:
    """Adapt ``loaded`` to the words in ``examples``; with ``far``, calibrate the
    open-set rule on negatives (:func:`negative_pool`: generated and recorded backgrounds,
    the run's own meta-training words other than these when its corpus is at hand, and
    the clips of ``negatives/`` if given) so that at most that fraction of them is
    accepted as a word (``rule``: default :func:`default_rule`). With ``expect``, also
    gather the :class:`Evidence` of :meth:`Adapted.expectations` (one more adaptation
    per clip of the word with most)."""
    x, y, words = read_examples(examples, loaded.frontend)
    check_word_count(loaded, len(words))
    adapted = Adapted(loaded.algo.adapt(x, y, steps=steps, classes=words), loaded.frontend)
    neg_values = None
    rule = rule or default_rule(loaded)
    if far is not None:
        pool = negative_pool(loaded, exclude=words)
        if negatives is not None:
            pool.append(read_negatives(negatives, loaded.frontend))
        neg_values, bank = negative_values(adapted, pool, rule=rule, seed=loaded.config.seed)
        adapted.open_set = open_set_from(neg_values, bank, far=far, rule=rule)
    if expect:
        adapted.evidence = support_evidence(loaded, adapted, x, y, neg_values, steps=steps)
    return adapted


def support_evidence(loaded: LoadedModel, adapted: Adapted, x: Tensor, y: Tensor,
                     neg_values: Tensor | None, *, steps: int | None = None) -> Evidence:
    """:class:`Evidence` for ``adapted`` (enrolled from support ``x``, ``y`` by
    ``loaded``'s algorithm with ``steps``): its held-out scores, with the calibration
    negatives' scores."""
    def adapt(xs: Tensor, ys: Tensor) -> Learner:
        return loaded.algo.adapt(xs, ys, steps=steps, classes=adapted.classes)

    return Evidence(held_out_values(adapted, adapt, x, y), y, neg_values)


def read_negatives(folder: str | Path, frontend: FrontendConfig) -> Tensor:
    """Features of every readable audio file under ``folder`` (unreadable ones are skipped
    with a warning)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EnrollError(f"negatives folder {folder} does not exist")
    feats = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS:
            try:
                feats.append(featurize([p], frontend))
            except AudioError as err:
                warnings.warn(f"skipping {p}: {err.problem}", stacklevel=2)
    if not feats:
        raise EnrollError(f"no readable recording in {folder} "
                          f"(looked for {', '.join(AUDIO_EXTENSIONS)})")
    return torch.cat(feats)


def save_adapted(path: str | Path, adapted: Adapted, loaded: LoadedModel) -> Path:
    """Save an adapted model: the learner, plus the run config and front-end that rebuild
    its base model and featurise new clips."""
    bank = adapted.open_set.background
    expected = adapted.expectations()
    return adapted.learner.save(path, meta={
        "frontend": adapted.frontend.to_dict(), "config": loaded.config.to_dict(),
        # the rows of the head (wider than the run's ways when more words were enrolled)
        "ways": max(int(loaded.meta.get("ways", 0)), len(adapted.classes)),
        **({} if adapted.cascade is None else {"cascade": adapted.cascade}),
        "open_set": adapted.open_set.to_dict(),
        **({} if expected is None else {"expectations": expected.to_dict()})},
        tensors={} if bank is None else {"open_set/background": bank.contiguous()})


def load_adapted(path: str | Path) -> Adapted:
    """Rebuild a model saved by :func:`save_adapted`."""
    ckpt = load_checkpoint(path)
    if ckpt.meta.get("kind") != Learner.FORMAT_KIND:
        raise CheckpointError(f"{path} is not an adapted model (run `metavox adapt` first); "
                              "it looks like a meta-training checkpoint")
    model, _, frontend = rebuild_model(ckpt, path)
    try:
        bank = ckpt.section("open_set").get("background")
        open_set = OpenSet.from_dict(ckpt.meta.get("open_set") or {}, bank)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: unusable open-set settings ({err})") from None
    cascade = ckpt.meta.get("cascade")
    if cascade is not None and not isinstance(cascade, dict):
        raise CheckpointError(f"{path}: unusable cascade settings {cascade!r}")
    return Adapted(Learner.from_checkpoint(ckpt, model, source=str(path)), frontend, open_set,
                   cascade=cascade)
