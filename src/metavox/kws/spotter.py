"""Keyword spotting in a stream: an adapted model scores a sliding window every hop, the
scores are smoothed, and a word is detected when its score is above the open-set
threshold, then nothing is for a refractory period. With ``decision="segments"`` it
scores one window per speech segment instead (:mod:`metavox.kws.segments`), for words
spoken on their own.

- :class:`Detector` is the decision rule alone, a small state machine over
  ``(time, logits)`` steps, so an offline evaluation sweeping thresholds over recorded
  scores and a live stream make the very same decisions.
- :class:`Spotter` feeds audio chunks of any size through the front-end's
  :func:`~metavox.audio.streaming.feature_stream` and the model, and yields detections:
  the iterator API a service or ``metavox listen`` uses. On the heavy ``fusion`` base it
  runs the two-stage cascade of :mod:`metavox.kws.cascade` (the full model only on hops
  the speech embedding finds promising) unless told to verify every hop.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from metavox.audio.features import FrontendConfig
from metavox.audio.io import load_audio
from metavox.audio.streaming import feature_stream
from metavox.kws.cascade import CascadeError, CascadeScorer, is_heavy, stage1_rule
from metavox.kws.segments import Segment, Segmenter, SegmentSettings
from metavox.meta.openset import OpenSet
from metavox.pipeline.enroll import Adapted, featurize_waves

#: how a :class:`Spotter` decides: the sliding window every hop, or one window per segment
DECISIONS = ("windows", "segments")


@dataclass(frozen=True)
class Detection:
    """A word heard in a stream: ``time`` (seconds from the stream's start) is the end of
    the window whose smoothed score first crossed the threshold (for segment decisions:
    when the segment's window was complete, :attr:`metavox.kws.segments.Segment.time`)."""

    word: str
    time: float
    score: float

    def to_dict(self) -> dict[str, float | str]:
        return {"word": self.word, "time": round(self.time, 3), "score": round(self.score, 4)}


@dataclass(frozen=True)
class SpotSettings:
    """How scores become detections: the moving average over ``smooth`` hops, and the
    ``refractory`` seconds after a word's detection in which that word is not detected
    again (other words may be). ``None``: the front-end's window length, the time a word
    stays in view of the sliding window (with less, one utterance fires twice).
    ``decision``: ``"windows"`` (the sliding window, every hop) or ``"segments"`` (one
    window per speech segment, :mod:`metavox.kws.segments`; smoothing and the refractory
    period do not apply, ``segments`` says how speech is cut)."""

    smooth: int = 3
    refractory: float | None = None
    decision: str = "windows"
    segments: SegmentSettings = field(default_factory=SegmentSettings)

    def __post_init__(self) -> None:
        if self.smooth < 1 or (self.refractory is not None and self.refractory < 0):
            raise ValueError(f"need smooth >= 1 and refractory >= 0, got {self.smooth}, "
                             f"{self.refractory}")
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {self.decision!r}")

    def resolve(self, frontend: FrontendConfig) -> SpotSettings:
        """These settings with the refractory period set (the window's length if unset)."""
        if self.refractory is not None:
            return self
        return replace(self, refractory=float(frontend.duration))

    @property
    def refractory_seconds(self) -> float:
        if self.refractory is None:
            raise ValueError("the refractory period is unset: resolve the settings with the "
                             "front-end first (SpotSettings.resolve)")
        return self.refractory


class Smoother:
    """Per hop: the moving average of the last ``smooth`` rows of open-set scores (one per
    word, see :meth:`metavox.meta.openset.OpenSet.values`), and its best word and score
    (independent of the threshold); ``smoothed`` is the last averaged row (for a display)."""

    def __init__(self, smooth: int) -> None:
        self._recent: deque[Tensor] = deque(maxlen=smooth)
        self.smoothed: Tensor | None = None

    def step(self, values: Tensor) -> tuple[int, float]:
        self._recent.append(values.float())
        self.smoothed = torch.stack(tuple(self._recent)).mean(0)
        score, best = self.smoothed.max(-1)
        return int(best), float(score)


class Trigger:
    """Fires for the best word when its score is at or above ``threshold`` and at least
    ``refractory`` seconds have passed since it last fired for that word (a score that
    stays above fires again after each refractory period: a lower threshold never detects
    less)."""

    def __init__(self, threshold: float, refractory: float) -> None:
        self.threshold, self.refractory = threshold, refractory
        self._last: dict[int, float] = {}

    def step(self, time: float, score: float, word: int = 0) -> bool:
        fire = (score >= self.threshold
                and time - self._last.get(word, -math.inf) >= self.refractory)
        if fire:
            self._last[word] = time
        return fire


class Detector:
    """The decision rule over a stream of per-hop open-set scores ``[words]`` (see module
    doc)."""

    def __init__(self, words: list[str], open_set: OpenSet, settings: SpotSettings) -> None:
        self.words = list(words)
        self.smoother = Smoother(settings.smooth)
        self.trigger = Trigger(open_set.threshold, settings.refractory_seconds)

    def step(self, time: float, values: Tensor) -> Detection | None:
        """The detection this hop makes, if any."""
        best, score = self.smoother.step(values)
        if not self.trigger.step(time, score, best):
            return None
        return Detection(self.words[best], time, score)


def levels(values: Tensor, open_set: OpenSet) -> Tensor:
    """Open-set scores ``[..., words]`` as bar heights in ``[0, 1]`` for a display, with the
    threshold at 0.75: linear in the score, 0 at four standard deviations of the
    calibration negatives' scores below the threshold (0 to the threshold for
    probabilities; one unit of score when the spread is unknown)."""
    t = open_set.threshold
    if math.isinf(t):
        return torch.full_like(values, 0.75)
    if open_set.rule == "probability":
        below = 0.75 * values / max(t, 1e-6)
        above = 0.75 + 0.25 * (values - t) / max(1.0 - t, 1e-6)
        return torch.where(values < t, below, above).clamp(0.0, 1.0)
    span = 4 * open_set.spread if open_set.spread else 1.0
    return (0.75 + 0.75 * (values - t) / span).clamp(0.0, 1.0)


def smoothed_scores(values: Tensor, smooth: int) -> tuple[np.ndarray, np.ndarray]:
    """``(best word [hops], score [hops])`` of recorded per-hop open-set scores
    ``values [hops, words]``: what :class:`Smoother` computes live."""
    smoother = Smoother(smooth)
    pairs = [smoother.step(row) for row in values]
    return (np.array([b for b, _ in pairs], dtype=np.int64),
            np.array([s for _, s in pairs], dtype=np.float64))


def triggered(times: np.ndarray, best: np.ndarray, scores: np.ndarray, threshold: float,
              refractory: float) -> np.ndarray:
    """Indices of the hops at which :class:`Trigger` fires, over recorded best words and
    scores (cheap to repeat for many thresholds)."""
    trigger = Trigger(threshold, refractory)
    return np.array([i for i, (t, b, s) in enumerate(zip(
        times.tolist(), best.tolist(), scores.tolist(), strict=True)) if trigger.step(t, s, b)],
        dtype=np.int64)


def detect(times: np.ndarray, values: Tensor, words: list[str], open_set: OpenSet,
           settings: SpotSettings) -> list[Detection]:
    """Detections over recorded per-hop open-set scores ``values [hops, words]`` at
    ``times``: the same decisions :class:`Spotter` makes live."""
    best, scores = smoothed_scores(values, settings.smooth)
    return [Detection(words[int(best[i])], float(times[i]), float(scores[i]))
            for i in triggered(times, best, scores, open_set.threshold,
                               settings.refractory_seconds)]


@dataclass(frozen=True)
class Step:
    """One hop of a :class:`Spotter`: the window's open-set scores ``values [words]`` and
    the moving average ``smoothed`` the decision compared with the threshold; on a hop a
    cascade did not verify (``verified`` false) both are every word at the display's
    floor (:func:`unverified_row`) and no detection is made."""

    time: float
    values: Tensor
    smoothed: Tensor
    detection: Detection | None
    verified: bool = True


def unverified_row(open_set: OpenSet, words: int) -> Tensor:
    """The scores shown for a hop a cascade did not verify: what :func:`levels` draws at 0
    (four spreads of the negatives' scores below the threshold; 0 for probabilities)."""
    t = open_set.threshold
    if math.isinf(t) or open_set.rule == "probability":
        return torch.zeros(words)
    return torch.full((words,), t - (4 * open_set.spread if open_set.spread else 1.0))


class Spotter:
    """Spot an adapted model's words in a stream.

    >>> spotter = Spotter(load_adapted("my_words.safetensors"))
    >>> for chunk in chunks:                 # float32 mono at the model's sample rate
    ...     for d in spotter.feed(chunk):
    ...         print(d.time, d.word)

    ``cascade`` (models on the heavy ``fusion`` base only): ``None`` runs the cascade of
    :mod:`metavox.kws.cascade` when the model has a stage-1 rule or the background bank
    to calibrate one, ``True`` requires it, ``False`` verifies every hop (the comparison);
    ``cascade_far``: stage 1's rate of negatives passed (default: the saved rule's, else
    :data:`metavox.kws.cascade.DEFAULT_FAR`); ``cascade_stride``: hops between the full
    model's verifications within a run of candidates (default: the rule's).
    """

    def __init__(self, adapted: Adapted, *, settings: SpotSettings | None = None,
                 hop: int | None = None, open_set: OpenSet | None = None,
                 cascade: bool | None = None, cascade_far: float | None = None,
                 cascade_stride: int | None = None) -> None:
        self.adapted = adapted
        self.settings = (settings or SpotSettings()).resolve(adapted.frontend)
        self.open_set = open_set or adapted.open_set
        self.detector = Detector(adapted.classes, self.open_set, self.settings)
        self.sample_rate = adapted.frontend.sample_rate
        self.scorer: CascadeScorer | None = None
        self.segmenter: Segmenter | None = None
        self._floor = unverified_row(self.open_set, len(adapted.classes))
        if self.settings.decision == "segments":
            if cascade:
                raise CascadeError("the cascade serves the sliding window; segment "
                                   "decisions score one window per segment")
            self.segmenter = Segmenter(self.sample_rate, adapted.frontend.num_samples,
                                       self.settings.segments)
            self.features = None
            return
        if is_heavy(adapted.frontend):
            stage1 = None
            if cascade is not False:
                try:
                    stage1 = stage1_rule(adapted, cascade_far, self.open_set,
                                         cascade_stride)
                except CascadeError:
                    if cascade:
                        raise
            self.scorer = CascadeScorer(adapted, self.open_set, stage1,
                                        self.settings.smooth, hop)
            self.features = None
        elif cascade:
            raise CascadeError(f"a cascade serves models on the fusion base; this one reads "
                               f"{adapted.frontend.kind!r} features")
        else:
            self.features = feature_stream(adapted.frontend, hop)

    @property
    def hop_seconds(self) -> float:
        """Seconds between scores (for segment decisions: the segmenter's frame)."""
        if self.segmenter is not None:
            return self.segmenter.frame / self.sample_rate
        hop = self.scorer.hop if self.scorer is not None else self.features.hop
        return hop / self.sample_rate

    @property
    def cascading(self) -> bool:
        """Whether the full model runs only on candidate hops."""
        return self.scorer is not None and self.scorer.stage1 is not None

    @property
    def verified_fraction(self) -> float:
        """The fraction of hops so far whose window the full model scored (1 without a
        cascade)."""
        if self.scorer is None:
            return 1.0
        return self.scorer.verified / max(self.scorer.hops, 1)

    def steps(self, chunk: np.ndarray) -> list[Step]:
        """Every hop ``chunk`` completes: scores, smoothed scores and detection (for
        segment decisions: every segment it completes)."""
        if self.segmenter is not None:
            return self._segment_steps(self.segmenter.push(chunk))
        if self.scorer is None:
            out = []
            for t, row in self.scores(chunk):
                d = self.detector.step(t, row)
                out.append(Step(t, row, self.detector.smoother.smoothed, d))
            return out
        out = []
        for t, _, rows in self.scorer.push(chunk):
            if rows is None:
                out.append(Step(t, self._floor, self._floor, None, verified=False))
                continue
            smoothed = torch.stack([r.float() for r in rows]).mean(0)
            score, best = smoothed.max(-1)
            fire = self.detector.trigger.step(t, float(score), int(best))
            d = Detection(self.detector.words[int(best)], t, float(score)) if fire else None
            out.append(Step(t, rows[-1], smoothed, d))
        return out

    def finish(self) -> list[Step]:
        """At the stream's end: the segments still open or waiting for their context
        (nothing for the sliding window, which decides as the hops come)."""
        if self.segmenter is None:
            return []
        return self._segment_steps(self.segmenter.flush())

    def _segment_steps(self, segments: list[Segment]) -> list[Step]:
        if not segments:
            return []
        x = featurize_waves([g.window for g in segments], self.adapted.frontend)
        out = []
        for g, row in zip(segments, self.adapted.values(x, self.open_set), strict=True):
            score, best = row.max(-1)
            fire = float(score) >= self.open_set.threshold
            d = Detection(self.detector.words[int(best)], g.time, float(score)) if fire \
                else None
            out.append(Step(g.time, row, row, d))
        return out

    def scores(self, chunk: np.ndarray) -> list[tuple[float, Tensor]]:
        """``(time, open-set scores [words])`` for every hop ``chunk`` completes (no
        decisions; not for a cascade, which scores only some hops: see :meth:`steps`;
        for segment decisions, every segment it completes)."""
        if self.segmenter is not None:
            return [(s.time, s.values) for s in self.steps(chunk)]
        if self.scorer is not None:
            if self.cascading:
                raise CascadeError("a cascade scores only candidate hops: use Spotter.steps, "
                                   "or cascade=False to score every hop")
            return [(t, rows[-1]) for t, _, rows in self.scorer.push(chunk)]
        steps = self.features.push(chunk)
        if not steps:
            return []
        x = torch.stack([f for _, f in steps]).unsqueeze(1)
        values = self.adapted.values(x, self.open_set)
        return [(t, row) for (t, _), row in zip(steps, values, strict=True)]

    def feed(self, chunk: np.ndarray) -> list[Detection]:
        """Detections the new samples complete."""
        return [s.detection for s in self.steps(chunk) if s.detection is not None]

    def run(self, chunks: Iterable[np.ndarray]) -> Iterator[Detection]:
        """Detections over an iterable of chunks, as they happen, then at its end
        (:meth:`finish`)."""
        for chunk in chunks:
            yield from self.feed(chunk)
        yield from (s.detection for s in self.finish() if s.detection is not None)


def file_chunks(path: str, sample_rate: int, *, seconds: float = 1.0) -> Iterator[np.ndarray]:
    """A whole audio file, mono at ``sample_rate``, in chunks of ``seconds``, then half a
    second of silence, so that a word at the very end is still heard through smoothing."""
    wave = load_audio(path, sample_rate)
    step = max(1, int(seconds * sample_rate))
    for i in range(0, len(wave), step):
        yield wave[i:i + step]
    yield np.zeros(sample_rate // 2, dtype=np.float32)


def pcm_chunks(stream, sample_rate: int, *, dtype: str = "int16",
               seconds: float = 0.1) -> Iterator[np.ndarray]:
    """Raw little-endian PCM (mono) from a binary file object, e.g. standard input, as
    float32 chunks in [-1, 1]."""
    kinds = {"int16": ("<i2", 32768.0), "float32": ("<f4", 1.0)}
    if dtype not in kinds:
        raise ValueError(f"PCM dtype must be one of {sorted(kinds)}, got {dtype!r}")
    fmt, scale = kinds[dtype]
    width = np.dtype(fmt).itemsize
    size = max(1, int(seconds * sample_rate)) * width
    rest = b""
    while True:
        data = stream.read(size)
        if not data:
            break
        data = rest + data
        cut = len(data) - len(data) % width
        rest = data[cut:]
        yield (np.frombuffer(data[:cut], dtype=fmt).astype(np.float32) / scale)
