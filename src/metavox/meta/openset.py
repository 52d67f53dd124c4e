"""Open-set answers: "none of these" for inputs that are none of the enrolled classes.

An adapted classifier always picks one of its classes. :class:`OpenSet` scores every class
of an input by a *rule*, takes the best, and answers *unknown* below a threshold that is
calibrated on negatives (clips known to be none of the classes) to a false-accept rate the
user sets:

- ``"logit"``: the class's logit. For a prototype-initialised head on normalised features
  (Proto-MAML, the speech-embedding backbone) the logit ``2c·f - |c|^2`` is
  ``|f|^2 - |f - c|^2``: a monotone function of the distance to the class's prototype,
  so this is the distance rule of few-shot open-set recognition.
- ``"probability"``: the class's softmax probability (the classic confidence rule; it
  cannot reject an input that is far from every class but farthest from one).
- ``"background"``: the class's logit minus the input's best *background* logit
  ``max_j 2 b_j·f - |b_j|^2`` over a bank of negatives' embeddings ``b_j`` (the same
  prototype formula, so on normalised features it compares the distance to the class's
  prototype with the distance to the nearest negative): a background class built from
  negatives, a likelihood ratio in spirit. The bank and the calibration use disjoint
  halves of the negatives.
- ``"learned"``: the class's output of a learner trained to reject (protoreject,
  :mod:`metavox.meta.reject`), which is already the class's logit minus the task's
  learned unknown logit; 0 is the learned boundary, a calibrated threshold moves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

RULES = ("background", "learned", "logit", "probability")


def background_logits(features: Tensor, bank: Tensor) -> Tensor:
    """``[N]``: each input's best logit among the background embeddings ``bank [M, dim]``
    (``max_j 2 b_j·f - |b_j|^2``)."""
    return (2 * features @ bank.t() - bank.square().sum(-1)).max(-1).values


def rule_values(rule: str, logits: Tensor, features: Tensor | None = None,
                bank: Tensor | None = None) -> Tensor:
    """``[N, classes]``: every class's open-set score under ``rule`` (the best is
    compared with the threshold)."""
    if rule in ("logit", "learned"):
        return logits
    if rule == "probability":
        return logits.softmax(-1)
    if rule == "background":
        if features is None or bank is None:
            raise ValueError("the background rule needs the inputs' features and a bank of "
                             "negatives' embeddings")
        return logits - background_logits(features, bank.to(features.dtype)).unsqueeze(-1)
    raise ValueError(f"open-set rule must be one of {RULES}, got {rule!r}")


@dataclass(frozen=True)
class OpenSet:
    """A rejection rule: accept the best class when its score is ``>= threshold``.

    ``far``: the false-accept rate on the negative clips it was calibrated to, or
    ``fa_per_hour``: the false accepts per hour on a negative stream; ``negatives``: how
    many clips (or stream hops) there were (all for the record); ``background``: the bank
    of negatives' embeddings for the ``"background"`` rule; ``spread``: the standard
    deviation of the negatives' scores, the scale of this rule's scores for a display.
    """

    rule: str = "logit"
    threshold: float = -math.inf
    far: float | None = None
    negatives: int = 0
    background: Tensor | None = field(default=None, compare=False, repr=False)
    fa_per_hour: float | None = None
    spread: float | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"open-set rule must be one of {RULES}, got {self.rule!r}")
        if self.far is not None and not 0.0 <= self.far <= 1.0:
            raise ValueError(f"far must be a rate in [0, 1], got {self.far}")
        if self.rule == "background" and self.background is None:
            raise ValueError("the background rule needs its bank of negatives' embeddings")

    def values(self, logits: Tensor, features: Tensor | None = None) -> Tensor:
        """Every class's score ``[N, classes]`` (see :func:`rule_values`)."""
        return rule_values(self.rule, logits, features, self.background)

    def decide(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """``(class [N], score [N])`` from :meth:`values`; class ``-1`` is *unknown*."""
        score, best = values.max(-1)
        return torch.where(score >= self.threshold, best, torch.full_like(best, -1)), score

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (the background bank is stored as a tensor beside them)."""
        t = self.threshold
        return {"rule": self.rule, "threshold": None if math.isinf(t) else float(t),
                "far": self.far, "negatives": self.negatives, "fa_per_hour": self.fa_per_hour,
                "spread": self.spread}

    @classmethod
    def from_dict(cls, d: dict[str, Any], background: Tensor | None = None) -> OpenSet:
        t = d.get("threshold")
        return cls(rule=d.get("rule", "logit"), threshold=-math.inf if t is None else float(t),
                   far=d.get("far"), negatives=int(d.get("negatives", 0)),
                   background=background, fa_per_hour=d.get("fa_per_hour"),
                   spread=d.get("spread"))


def threshold_for(scores: Tensor, far: float) -> float:
    """The smallest threshold at which at most a fraction ``far`` of ``scores`` (the
    negatives' best scores) pass: just above the ``floor(far·n)+1``-th highest."""
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be a rate in [0, 1], got {far}")
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError("calibration needs at least one negative's score")
    s = np.sort(scores.float().numpy())[::-1]
    allowed = int(math.floor(far * len(s)))
    if allowed >= len(s):
        return -math.inf
    return float(np.nextafter(np.float32(s[allowed]), np.float32(np.inf)))


def calibrate(negative_logits: Tensor, far: float, rule: str = "logit") -> OpenSet:
    """The ``logit`` or ``probability`` rule accepting at most ``far`` of the negatives
    (their logits ``[N, classes]``); the background rule: see
    :func:`metavox.pipeline.enroll.calibrate_open_set`."""
    if negative_logits.ndim != 2 or len(negative_logits) == 0:
        raise ValueError("calibration needs at least one negative clip's logits [N, C]")
    if rule == "background":
        raise ValueError("the background rule is calibrated with its bank: "
                         "see calibrate_open_set")
    scores = rule_values(rule, negative_logits.float()).max(-1).values
    return OpenSet(rule, threshold_for(scores, far), far, len(scores), spread=spread_of(scores))


def spread_of(scores: Tensor) -> float | None:
    """The standard deviation of negatives' scores (``None`` for fewer than 2)."""
    return float(scores.float().std()) if len(scores) > 1 else None
