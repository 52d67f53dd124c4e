"""A two-stage cascade for spotting words in a stream with a model on the heavy base (the
``fusion`` of the speech embedding and EfficientWord-Net's ResNet-50).

Running the fused model on every 80 ms hop costs a ResNet-50 pass per hop (about 36 ms of
one core here in PyTorch, one window at a time: a real-time factor near 0.45). Most hops
hold background or other words, and the speech embedding, which a stream computes
incrementally anyway, already tells most of them apart. So:

- **stage 1**, every hop: the window's speech-embedding windows, pooled and normalised
  as the fusion model pools them, against each word's *speech direction*: the speech
  embedding's part of the adapted model's class vectors (its head's rows, or ProtoNet's
  prototypes; :func:`word_directions`). The best cosine is the hop's stage-1 score.
  A hop is a *candidate* when it is at or above the stage-1 threshold, calibrated to pass
  a fraction ``far`` of the same negatives the open set was calibrated on (the adapted
  model's bank of negatives, kept for every rule, whose embeddings hold each negative's
  speech-embedding part: :func:`calibrate_stage1`), looser than the open set's rate (default
  :data:`DEFAULT_FAR`).
- **stage 2**, only on candidates, and within a run of consecutive candidates only every
  ``stride`` hops (:attr:`Stage1.stride`, default :data:`DEFAULT_STRIDE`: 320 ms; the
  1.5 s window the ResNet sees still looks at each word several times): the full adapted
  model (both bases) on the window, with its own open-set rule. The decision at a
  verified hop is the rule verifying every hop applies, over what was verified: the mean
  of the full model's scores of the verified windows among the last ``smooth`` hops (one
  window at the default stride); a hop that is not verified makes no detection.

So the cascade can only miss words stage 1 passes over, or decide on fewer windows than
verifying every hop. Against the first cascade (every candidate verified, with the
``smooth - 1`` hops before it) the stride cuts the windows verified about threefold
(measured in docs/kws.md#cascade, with ``benchmarks/cascade_rules.py``).
:func:`cascade_scores` and :func:`cascade_triggered` make these decisions over recorded
scores (the stream protocol), :class:`CascadeScorer` live
(:class:`metavox.kws.spotter.Spotter`); both give the same detections.

The stage-1 rule (:class:`Stage1`) is saved with the adapted model
(:func:`metavox.pipeline.enroll.save_adapted` stores ``Adapted.cascade``); a model saved
without it gets it from its own background bank at :data:`DEFAULT_FAR` when loaded into a
spotter, the same every time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metavox.audio.encoders import ENCODERS
from metavox.audio.features import FUSION, FrontendConfig, fusion_layout, shared_frontend
from metavox.audio.streaming import EmbeddingFeatureStream
from metavox.meta.learner import LEARNER_FEATURES
from metavox.meta.openset import OpenSet, threshold_for
from metavox.pipeline.enroll import Adapted

#: the fraction of negatives stage 1 passes by default (the open set's is ~1%): see the
#: trade-off measured in docs/kws.md#cascade
DEFAULT_FAR = 0.1
#: hops between the full model's verifications within a run of candidates by default
DEFAULT_STRIDE = 4
#: samples between hops of a cascade: the speech embedding's 80 ms step
HOP = EmbeddingFeatureStream.STEP
_SPEECH_DIM = ENCODERS["speech-embedding"].dim
_RESNET_WINDOW = 24000  # the ResNet's 1.5 s, centred in the window (as FusionFeatures)


class CascadeError(ValueError):
    """A model or setting the cascade cannot use; the message says why."""


@dataclass(frozen=True)
class Stage1:
    """The stage-1 rule: a hop is a candidate when its best cosine between the window's
    pooled speech embedding and a word's speech direction is ``>= threshold``; ``far``:
    the fraction of the ``negatives`` it was calibrated on that pass; ``stride``: the
    full model verifies a candidate hop when at least this many hops have passed since
    the last one it verified (1: every candidate). A rule saved without a stride (before
    there was one) gets the default."""

    threshold: float
    far: float
    negatives: int
    stride: int = DEFAULT_STRIDE

    def __post_init__(self) -> None:
        if not 0.0 <= self.far <= 1.0:
            raise CascadeError(f"the stage-1 rate far must be in [0, 1], got {self.far}")
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) \
                or self.stride < 1:
            raise CascadeError(f"the cascade's stride must be a whole number of hops >= 1, "
                               f"got {self.stride!r}")

    def to_dict(self) -> dict[str, Any]:
        t = self.threshold
        return {"threshold": None if math.isinf(t) else float(t), "far": self.far,
                "negatives": self.negatives, "stride": self.stride}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stage1:
        try:
            t = d.get("threshold")
            return cls(-math.inf if t is None else float(t), float(d["far"]),
                       int(d.get("negatives", 0)), int(d.get("stride", DEFAULT_STRIDE)))
        except (KeyError, TypeError, ValueError) as err:
            raise CascadeError(f"unusable stage-1 settings {d!r} ({err})") from None


def is_heavy(frontend: FrontendConfig) -> bool:
    """Whether a model on ``frontend`` is one a cascade serves: the ``fusion`` base."""
    return frontend.kind == FUSION


def speech_config(frontend: FrontendConfig) -> FrontendConfig:
    """The speech embedding's front-end on the same windows as a ``fusion`` front-end."""
    return FrontendConfig(kind="speech-embedding", duration=frontend.duration,
                          sample_rate=frontend.sample_rate)


def _module_parts(adapted: Adapted) -> tuple[nn.Module, Tensor]:
    """The adapted model's body (what embeds a window) and class vectors ``[rows, dim]``."""
    learner = adapted.learner
    module = learner.to_module()
    if learner.kind == "model" and isinstance(getattr(module, "head", None), nn.Linear):
        vectors = module.head.weight
    elif learner.kind == "body_head" and isinstance(module[1], nn.Linear):
        vectors = module[1].weight
    elif learner.kind == "prototypes":
        vectors = module.prototypes
    elif learner.kind == "reject" and isinstance(getattr(module.inner, "head", None),
                                                 nn.Linear):
        vectors = module.inner.head.weight  # trained to reject: its model's head
    else:
        raise CascadeError(f"a cascade needs a linear head or prototypes on the fusion body; "
                           f"this model's learner is {learner.kind!r}")
    return LEARNER_FEATURES[learner.kind](module), vectors.detach()


def word_directions(adapted: Adapted) -> Tensor:
    """``[words, 96]`` unit vectors: the speech-embedding part of each word's class vector
    (the fusion body puts the speech embedding's 96 values first)."""
    if not is_heavy(adapted.frontend):
        raise CascadeError(f"a cascade serves models on the fusion base; this one reads "
                           f"{adapted.frontend.kind!r} features")
    _, vectors = _module_parts(adapted)
    return F.normalize(vectors[: len(adapted.classes), :_SPEECH_DIM].float(), dim=-1)


def pooled_speech(adapted: Adapted, speech: Tensor) -> Tensor:
    """``[N, 96]`` unit vectors: windows' speech embeddings ``[N, 96, W]`` pooled as the
    adapted fusion body pools them (mean, or max)."""
    body, _ = _module_parts(adapted)
    pooled = speech.amax(-1) if getattr(body, "pool", "mean") == "max" else speech.mean(-1)
    return F.normalize(pooled.float(), dim=-1)


def stage1_values(adapted: Adapted, speech: Tensor) -> Tensor:
    """``[N, words]``: each word's stage-1 cosine for windows' speech embeddings
    ``[N, 96, W]``."""
    return pooled_speech(adapted, speech) @ word_directions(adapted).t()


def split_fused(features: Tensor, frontend: FrontendConfig) -> tuple[Tensor, Tensor]:
    """``(speech [N, 96, W], resnet [N, 2048])`` of ``fusion`` features
    ``[N, 1, 96 * W + 2048, 1]`` (:func:`metavox.audio.features.fusion_layout`)."""
    windows, dim, size = fusion_layout(frontend.num_samples)
    flat = features.reshape(len(features), size)
    cut = _SPEECH_DIM * windows
    return flat[:, :cut].reshape(-1, _SPEECH_DIM, windows), flat[:, cut:]


def fuse(speech: Tensor, resnet: Tensor) -> Tensor:
    """``fusion`` features ``[N, 1, 96 * W + 2048, 1]`` from their two parts (feature-major
    speech windows, then the ResNet's vector), as :class:`FusionFeatures` lays them out."""
    out = torch.cat([speech.flatten(1), resnet], dim=1)
    return out.reshape(len(out), 1, out.shape[1], 1)


def stage1_scores(adapted: Adapted, features: Tensor, *, batch: int = 1024) -> np.ndarray:
    """``[hops]`` stage-1 scores of recorded ``fusion`` features ``[hops, 1, F, 1]``."""
    out = [stage1_values(adapted, split_fused(features[i:i + batch], adapted.frontend)[0]
                         ).max(-1).values for i in range(0, len(features), batch)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def calibrate_stage1(adapted: Adapted, far: float = DEFAULT_FAR,
                     open_set: OpenSet | None = None, stride: int = DEFAULT_STRIDE
                     ) -> Stage1:
    """The stage-1 rule passing a fraction ``far`` of the negatives in ``open_set``'s
    background bank (default: the model's): the fusion body's embeddings of the negatives
    the open set was calibrated on, whose first 96 values are each negative's pooled speech
    embedding, scaled (the body normalises the concatenation of the two bases' unit
    vectors)."""
    rule = open_set or adapted.open_set
    if rule.background is None:
        raise CascadeError("calibrating a cascade needs the bank of negatives the open set "
                           "was calibrated on (enroll with --far), or a saved stage-1 rule")
    speech = F.normalize(rule.background[:, :_SPEECH_DIM].float(), dim=-1)
    scores = (speech @ word_directions(adapted).t()).max(-1).values
    return Stage1(threshold_for(scores, far), float(far), len(scores), stride)


def stage1_rule(adapted: Adapted, far: float | None = None,
                open_set: OpenSet | None = None, stride: int | None = None) -> Stage1:
    """The stage-1 rule for ``adapted``: the saved one (``adapted.cascade``) unless ``far``
    asks for another rate, else calibrated on its bank (:func:`calibrate_stage1`);
    ``stride``, when given, replaces the rule's."""
    if adapted.cascade is not None:
        saved = Stage1.from_dict(adapted.cascade)
        if far is None or far == saved.far:
            return saved if stride is None else replace(saved, stride=stride)
    return calibrate_stage1(adapted, DEFAULT_FAR if far is None else far, open_set,
                            DEFAULT_STRIDE if stride is None else stride)


def with_stage1(adapted: Adapted, stage1: Stage1) -> Adapted:
    """``adapted`` carrying ``stage1`` (saved with it by ``save_adapted``)."""
    adapted.cascade = stage1.to_dict()
    return adapted


def verified_hops(candidates: np.ndarray, stride: int) -> np.ndarray:
    """``[hops]`` bool: the candidate hops whose window the full model scores: a candidate
    at least ``stride`` hops after the last one verified (every candidate at 1)."""
    c = np.asarray(candidates, dtype=bool)
    out = np.zeros_like(c)
    last = -stride
    for i in np.flatnonzero(c).tolist():
        if i - last >= stride:
            out[i], last = True, i
    return out


def cascade_scores(values: Tensor, verified: np.ndarray, smooth: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(best word [hops], score [hops])`` of the cascade over recorded per-hop open-set
    scores ``values [hops, words]``: at a verified hop, the mean of the verified rows
    among the last ``smooth`` hops (what :class:`CascadeScorer` averages live); at other
    hops word 0 and ``-inf`` (no decision)."""
    hops = len(values)
    best = np.zeros(hops, dtype=np.int64)
    scores = np.full(hops, -math.inf)
    idx = np.flatnonzero(np.asarray(verified, dtype=bool))
    firsts = np.searchsorted(idx, idx - smooth + 1)  # the first verified hop in each span
    for n, (i, first) in enumerate(zip(idx.tolist(), firsts.tolist(), strict=True)):
        score, word = values[idx[first:n + 1]].float().mean(0).max(-1)
        best[i], scores[i] = int(word), float(score)
    return best, scores


def cascade_triggered(times: np.ndarray, best: np.ndarray, scores: np.ndarray,
                      verified: np.ndarray, threshold: float, refractory: float
                      ) -> np.ndarray:
    """Indices of the hops at which the cascade detects, over its recorded scores
    (:func:`cascade_scores`) and verified hops: the trigger steps at verified hops only."""
    from metavox.kws.spotter import triggered

    idx = np.flatnonzero(np.asarray(verified, dtype=bool))
    fired = triggered(times[idx], best[idx], scores[idx], threshold, refractory)
    return idx[fired]


def fusion_stream_features(wave: np.ndarray, frontend: FrontendConfig, *, hop: int = HOP,
                           batch: int = 32) -> tuple[np.ndarray, Tensor]:
    """``(times [hops], fusion features [hops, 1, F, 1])`` of a whole recorded stream, every
    hop, as :class:`metavox.audio.streaming.ClipFeatureStream` gives them, faster: the
    speech embedding incrementally, the ResNet batched over the windows (what verifying
    every hop computes; the stream protocol's features on the fusion base)."""
    speech = EmbeddingFeatureStream(speech_config(frontend), hop)
    size = frontend.num_samples
    padded = np.concatenate([np.zeros(size, np.float32), np.asarray(wave, np.float32)])
    steps = speech.push(padded[size:])
    resnet = shared_frontend(frontend).resnet
    mid = (size - _RESNET_WINDOW) // 2
    out = []
    with torch.no_grad():
        for i in range(0, len(steps), batch):
            part = steps[i:i + batch]
            ends = [size + (k + 1) * hop for k in range(i, i + len(part))]
            waves = torch.from_numpy(np.stack([padded[e - size + mid: e - size + mid
                                                      + _RESNET_WINDOW] for e in ends]))
            out.append(fuse(torch.stack([f for _, f in part]), resnet(waves)[:, 0]))
    times = np.array([t for t, _ in steps])
    return times, (torch.cat(out) if out else torch.zeros(0, 1, frontend.num_features, 1))


class CascadeScorer:
    """The cascade live: push samples, get per hop ``(time, stage-1 score, rows)`` where
    ``rows`` is ``None`` for a hop the full model does not verify, else the full model's
    open-set scores ``[words]`` of the verified windows among the last ``smooth`` hops
    (this one last), whose mean is the decision's score. ``stage1=None`` verifies every
    hop (the comparison). The speech embedding runs incrementally (each 775 ms window
    once), the ResNet on each verified window's centred 1.5 s."""

    def __init__(self, adapted: Adapted, open_set: OpenSet, stage1: Stage1 | None,
                 smooth: int, hop: int | None = None) -> None:
        if not is_heavy(adapted.frontend):
            raise CascadeError(f"a cascade serves models on the fusion base, not "
                               f"{adapted.frontend.kind!r}")
        hop = HOP if hop is None else hop
        if hop % HOP:
            raise CascadeError(f"a cascade's hop must be a multiple of {HOP} samples (80 ms, "
                               f"the speech embedding's step), got {hop}")
        self.adapted, self.open_set, self.stage1 = adapted, open_set, stage1
        self.smooth = smooth
        self.stride = 1 if stage1 is None else stage1.stride
        self.speech = EmbeddingFeatureStream(speech_config(adapted.frontend), hop)
        self.resnet = shared_frontend(adapted.frontend).resnet
        self.directions = word_directions(adapted) if stage1 is not None else None
        self.pool = getattr(_module_parts(adapted)[0], "pool", "mean")
        self.size = adapted.frontend.num_samples
        self.window = np.zeros(self.size, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.recent: deque[tuple[int, Tensor]] = deque(maxlen=smooth)  # (hop, scores)
        self._last = -self.stride  # the last hop verified
        self.hops = 0  # hops seen
        self.verified = 0  # windows the full model scored

    @property
    def hop(self) -> int:
        return self.speech.hop

    def push(self, chunk: np.ndarray) -> list[tuple[float, float, list[Tensor] | None]]:
        """One ``(time, stage-1 score, rows or None)`` per hop the samples complete (the
        stage-1 score is ``inf`` when every hop is verified)."""
        x = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if not np.isfinite(x).all():
            raise ValueError("the stream holds NaN or infinite samples")
        self._pending = np.concatenate([self._pending, x])
        out = []
        while len(self._pending) >= self.hop:
            piece, self._pending = self._pending[: self.hop], self._pending[self.hop:]
            self.window = np.concatenate([self.window, piece])[-self.size:]
            ((t, speech),) = self.speech.push(piece)
            out.append(self._hop(t, speech, self.window))
        return out

    def _hop(self, t: float, speech: Tensor, window: np.ndarray
             ) -> tuple[float, float, list[Tensor] | None]:
        i = self.hops
        self.hops += 1
        if self.stage1 is None:
            s1 = math.inf
        else:
            pooled = speech.amax(-1) if self.pool == "max" else speech.mean(-1)
            s1 = float((F.normalize(pooled.float(), dim=-1) @ self.directions.t()).max())
            if s1 < self.stage1.threshold or i - self._last < self.stride:
                return t, s1, None
        mid = (self.size - _RESNET_WINDOW) // 2
        with torch.no_grad():
            resnet = self.resnet(torch.from_numpy(window[mid:mid + _RESNET_WINDOW])[None])
            (values,) = self.adapted.values(fuse(speech[None], resnet[:, 0]), self.open_set)
        self._last = i
        self.verified += 1
        self.recent.append((i, values))
        return t, s1, [v for j, v in self.recent if j > i - self.smooth]
