"""Open-set answers: "none of these" for inputs that are none of the enrolled classes.

An adapted classifier always picks one of its classes. :class:`OpenSet` adds a rule that
scores the best class and answers *unknown* below a threshold, calibrated on negatives
(clips known to be none of the classes) to a false-accept rate the user sets:

- ``"logit"``: the best class's logit. For a prototype-initialised head on normalised
  features (Proto-MAML, the speech-embedding backbone) the logit ``2c·f - |c|^2`` is
  ``|f|^2 - |f - c|^2``: a monotone function of the distance to the class's prototype,
  so this is the distance rule of few-shot open-set recognition.
- ``"probability"``: the best class's softmax probability (the classic confidence rule;
  it cannot reject an input that is far from every class but farthest from one).

Calibration picks the threshold at which at most ``far`` of the negatives are accepted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

RULES = ("logit", "probability")


def best_scores(logits: Tensor, rule: str) -> tuple[Tensor, Tensor]:
    """``(best class [N], its score [N])`` of ``logits [N, C]`` under ``rule``."""
    if rule not in RULES:
        raise ValueError(f"open-set rule must be one of {RULES}, got {rule!r}")
    values = logits if rule == "logit" else logits.softmax(-1)
    score, best = values.max(-1)
    return best, score


@dataclass(frozen=True)
class OpenSet:
    """A rejection rule: accept the best class when its score is ``>= threshold``.

    ``far``: the false-accept rate on the negatives it was calibrated to; ``negatives``:
    how many there were (both for the record).
    """

    rule: str = "logit"
    threshold: float = -math.inf
    far: float | None = None
    negatives: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"open-set rule must be one of {RULES}, got {self.rule!r}")
        if self.far is not None and not 0.0 <= self.far <= 1.0:
            raise ValueError(f"far must be a rate in [0, 1], got {self.far}")

    def decide(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(class [N], score [N])``; class ``-1`` is *unknown*."""
        best, score = best_scores(logits, self.rule)
        return torch.where(score >= self.threshold, best, torch.full_like(best, -1)), score

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["threshold"] = None if math.isinf(self.threshold) else float(self.threshold)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpenSet:
        t = d.get("threshold")
        return cls(rule=d.get("rule", "logit"), threshold=-math.inf if t is None else float(t),
                   far=d.get("far"), negatives=int(d.get("negatives", 0)))


def calibrate(negative_logits: Tensor, far: float, rule: str = "logit") -> OpenSet:
    """The rule whose threshold accepts at most a fraction ``far`` of the negatives (the
    smallest such threshold, so as many true words as possible still pass)."""
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be a rate in [0, 1], got {far}")
    if negative_logits.ndim != 2 or len(negative_logits) == 0:
        raise ValueError("calibration needs at least one negative clip's logits [N, C]")
    _, score = best_scores(negative_logits.float(), rule)
    s = np.sort(score.numpy())[::-1]  # descending
    allowed = int(math.floor(far * len(s)))  # negatives that may pass
    if allowed >= len(s):
        return OpenSet(rule, -math.inf, far, len(s))
    # strictly above the (allowed+1)-th highest negative: at most `allowed` pass
    threshold = float(np.nextafter(np.float32(s[allowed]), np.float32(np.inf)))
    return OpenSet(rule, threshold, far, len(s))
