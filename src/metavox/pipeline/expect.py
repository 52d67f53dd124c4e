"""What an enrollment should expect: held-out checks of the recordings, per-word expected
detection and false-accept rates, and a confidence a person can read.

Every number here comes from the enrollment's own clips and its calibration negatives,
scored by the open-set rule the model answers with:

- **Held out** (:func:`held_out_values`): each support clip is scored by a model adapted
  *without* it (fold ``r`` leaves out the ``r``-th clip of every word that has two or
  more, so there are as many adaptations as the most clips of a word, not one per clip).
  The folds' scores use the full model's open-set rule (its background bank), which is
  exact for prototype models (the encoder does not adapt) and a close approximation for
  models whose body adapts (MAML). A word with one clip is never held out.
- **Outlier clip**: a held-out clip of a word with two or more clips, when more than half
  of its siblings (the word's other clips, held out too) are recognised as the word, and
  the clip itself (a) is taken for another word, or (b) falls below the detection
  threshold, or (c) scores more than :data:`OUTLIER_SPREADS` spreads (the standard
  deviation of the negatives' scores, :attr:`OpenSet.spread`) below the median of its
  siblings' scores. It "sounds different from the others"; when most of a word's clips
  are taken for another word, that is a confusable pair, not an outlier.
- **Confusable pair**: words ``a`` and ``b`` when a held-out clip of one (not an outlier)
  scores higher for the other than for its own word, or less than
  :data:`CONFUSION_SPREADS` spread below it: a margin that the variation between
  utterances can close. (Passing the other word's threshold alone is no sign: a word
  fires only as the best word, and any speech scores well above noise for every word.)
- **Expected detection** of a word: the fraction of its held-out clips the model
  recognises as the word (its best word, at or above the threshold), with a 95% Wilson
  interval: from 3 clips it is a coarse estimate (3 of 3 is consistent with a true rate
  as low as 44%).
- **Expected false accepts** of a word: per 100 calibration negatives (generated and
  recorded backgrounds, the run's other words, your own negatives), how many the model
  would take for that word; the same negatives the threshold was calibrated on (the
  half not in the background bank).
- **Confidence** (:func:`confidence`): ``1 / (1 + 9 ** -((score - threshold) / spread))``:
  50% at the detection threshold; each spread (standard deviation of the negatives'
  scores) above it multiplies the odds by 9 (90% one spread above, 99% two above), and
  below it they fall the same way. It says how clearly a score clears the threshold
  on the scale that non-words' scores vary by; it is not the probability that the word
  was said.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from metavox.meta.openset import OpenSet

if TYPE_CHECKING:
    from metavox.meta import Learner
    from metavox.pipeline.enroll import Adapted

#: a clip whose held-out score is this many spreads below its siblings' median is flagged
OUTLIER_SPREADS = 3.0
#: a held-out clip whose own word leads another by less than this many spreads is evidence
#: that the two words may be confused
CONFUSION_SPREADS = 1.0
#: the odds of :func:`confidence` multiply by this per spread above the threshold
ODDS_PER_SPREAD = 9.0
#: z of the 95% Wilson interval of expected detection
WILSON_Z = 1.96


@dataclass(frozen=True)
class Evidence:
    """What the expectations are computed from (independent of the threshold):
    ``held_out [n, words]``, every support clip's open-set scores by a model adapted
    without it (NaN rows for clips never held out: their word has one clip);
    ``labels [n]``, the clips' word indices; ``negatives [m, words]``, the calibration
    negatives' scores (``None`` when the enrollment has no open set)."""

    held_out: Tensor
    labels: Tensor
    negatives: Tensor | None = None


@dataclass(frozen=True)
class WordExpectation:
    """One word's expected detection (``detected`` of ``held_out`` clips, rate with its
    95% interval; ``None`` when no clip could be held out) and false accepts
    (``false_accepts`` of ``negatives`` clips, and per 100)."""

    word: str
    clips: int
    held_out: int
    detected: int
    detection: float | None
    detection_low: float | None
    detection_high: float | None
    false_accepts: int | None
    negatives: int
    false_accepts_per_100: float | None


@dataclass(frozen=True)
class EnrollWarning:
    """``kind``: ``"outlier"`` (clip ``clip``, 1-based in the word's order, of
    ``words[0]``), ``"confusable"`` (``words`` a pair) or ``"few_clips"``; ``message``
    says it for a person."""

    kind: str
    words: list[str]
    message: str
    clip: int | None = None


@dataclass(frozen=True)
class Expectations:
    """Per-word expectations and warnings of one enrollment, at its open-set rule."""

    words: list[WordExpectation]
    warnings: list[EnrollWarning] = field(default_factory=list)
    rule: str = "logit"
    threshold: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Expectations:
        return cls(words=[WordExpectation(**w) for w in d.get("words", [])],
                   warnings=[EnrollWarning(**w) for w in d.get("warnings", [])],
                   rule=d.get("rule", "logit"), threshold=d.get("threshold"),
                   note=d.get("note", ""))

    def table(self) -> str:
        """A plain-text table (word, clips, expected detection, false accepts per 100
        negative clips, warnings) followed by the note."""
        head = ("word", "clips", "expected detection", "false accepts /100 others",
                "warnings")
        rows = []
        for w in self.words:
            det = ("n/a (1 clip)" if w.detection is None else
                   f"{w.detected}/{w.held_out} = {w.detection:.0%} "
                   f"(95%: {w.detection_low:.0%}-{w.detection_high:.0%})")
            fa = "n/a" if w.false_accepts_per_100 is None else f"{w.false_accepts_per_100:.1f}"
            n = sum(w.word in x.words for x in self.warnings)
            rows.append((w.word, str(w.clips), det, fa, str(n) if n else "-"))
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(k) for c, k in zip(r, widths, strict=True)).rstrip()
                 for r in [head, *rows]]
        lines += [f"warning: {x.message}" for x in self.warnings]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def held_out_values(adapted: Adapted, adapt: Callable[[Tensor, Tensor], Learner],
                    x: Tensor, y: Tensor) -> Tensor:
    """``[n, words]``: each support clip's open-set scores (by ``adapted``'s rule) from a
    model adapted by ``adapt(x, y)`` without it; NaN rows for the clips of words with a
    single clip. Fold ``r`` leaves out the ``r``-th clip of every word with two or more."""
    words = len(adapted.classes)
    out = torch.full((len(y), words), math.nan)
    order = {k: (y == k).nonzero().flatten().tolist() for k in range(words)}
    folds = max((len(v) for v in order.values() if len(v) > 1), default=0)
    for r in range(folds):
        held = torch.tensor(sorted(v[r] for v in order.values() if len(v) > 1 and r < len(v)))
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[held] = False
        fold = dataclasses.replace(adapted, learner=adapt(x[keep], y[keep]))
        out[held] = fold.values(x[held]).float()
    return out


def wilson(k: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a rate of ``k`` successes in ``n`` trials."""
    p, d = k / n, 1 + z * z / n
    center = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, center - half), min(1.0, center + half)


def expectations(evidence: Evidence, words: list[str], open_set: OpenSet) -> Expectations:
    """Warnings and per-word expectations of an enrollment (see the module's rules) at
    ``open_set``'s threshold."""
    t = open_set.threshold
    values, labels = evidence.held_out, evidence.labels
    scored = ~values.isnan().any(-1)
    decided = open_set.decide(values.nan_to_num(-math.inf))[0]
    neg_decided = None if evidence.negatives is None else open_set.decide(evidence.negatives)[0]
    out = [word_expectation(word, (labels == k) & scored, int((labels == k).sum()),
                            decided == k, None if neg_decided is None else neg_decided == k)
           for k, word in enumerate(words)]
    warns = [EnrollWarning("few_clips", [w.word], (
        f"'{w.word}' has only one clip: its detection cannot be estimated; record it 3 or "
        "more times")) for w in out if w.clips == 1]
    odd = outliers(values, labels, decided, open_set)
    for i, why in odd.items():
        k = int(labels[i])
        clip = (labels[:i] == k).sum().item() + 1
        warns.append(EnrollWarning("outlier", [words[k]], (
            f"clip {clip} of '{words[k]}' sounds different from the others (held out, it "
            f"{why.format(other=words[int(values[i].argmax())])}): re-record it?"), clip))
    # an outlier clip is evidence against itself, not against its word
    usable = scored.clone()
    usable[list(odd)] = False
    close = CONFUSION_SPREADS * open_set.spread if open_set.spread else 0.0
    for (a, b), (taken, n) in confusions(values, labels, usable, close).items():
        warns.append(EnrollWarning("confusable", [words[a], words[b]], (
            f"'{words[a]}' and '{words[b]}' may be confused: {taken} of their {n} clips, "
            "held out, score " + ("nearly as high (or higher) " if close else "higher ")
            + "for the other word")))
    fewest = min((w.held_out for w in out if w.held_out), default=0)
    note = ("Expected detection is measured on each word's own clips, each scored by a "
            "model enrolled without it")
    note += (f"; from {fewest} clips it is a coarse estimate (the 95% interval says how "
             "coarse): more clips make it firmer." if 0 < fewest < 10 else ".")
    if neg_decided is not None:
        note += (f" False accepts: of {len(neg_decided)} negative clips (backgrounds and "
                 "other words).")
    return Expectations(out, warns, open_set.rule, None if math.isinf(t) else t, note)


def word_expectation(word: str, held: Tensor, clips: int, hits: Tensor,
                     false_accepts: Tensor | None) -> WordExpectation:
    """One word's :class:`WordExpectation`: ``held`` marks its held-out clips, ``hits``
    the clips decided as the word, ``false_accepts`` the negatives decided as it."""
    n, got = int(held.sum()), int((hits & held).sum())
    low, high = wilson(got, n) if n else (None, None)
    fa = None if false_accepts is None else int(false_accepts.sum())
    m = 0 if false_accepts is None else len(false_accepts)
    return WordExpectation(word, clips, n, got, got / n if n else None, low, high, fa, m,
                           100.0 * fa / m if fa is not None and m else None)


def outliers(values: Tensor, labels: Tensor, decided: Tensor, open_set: OpenSet
             ) -> dict[int, str]:
    """Clip index -> why it is an outlier (``{other}`` stands for its best word), by the
    module's rule, among held-out ``values`` with their ``decided`` words."""
    t, found = open_set.threshold, {}
    own = values.gather(1, labels.unsqueeze(1)).squeeze(1)
    for k in labels.unique().tolist():
        ev = ((labels == k) & ~values.isnan().any(-1)).nonzero().flatten().tolist()
        for i in ev:
            siblings = [j for j in ev if j != i]
            if not siblings or 2 * int((decided[siblings] == k).sum()) <= len(siblings):
                continue
            if int(values[i].argmax()) != k:
                found[i] = "sounds more like '{other}'"
            elif own[i] < t:
                found[i] = "would not be detected while the others would"
            elif open_set.spread and (own[siblings].median() - own[i]
                                      > OUTLIER_SPREADS * open_set.spread):
                found[i] = "scores far below the others"
    return found


def confusions(values: Tensor, labels: Tensor, usable: Tensor, close: float
               ) -> dict[tuple[int, int], tuple[int, int]]:
    """Word pairs ``(a, b)``, ``a < b`` -> (how many of their ``usable`` held-out clips
    score less than ``close`` lower, or higher, for the other word; how many clips they
    have): the pairs with at least one such clip."""
    words, found = values.shape[1], {}
    for a in range(words):
        for b in range(a + 1, words):
            taken = sum(int((rows[:, src] - rows[:, dst] < close).sum())
                        for src, dst in ((a, b), (b, a))
                        for rows in [values[(labels == src) & usable]])
            if taken:
                found[(a, b)] = (taken, int((((labels == a) | (labels == b)) & usable).sum()))
    return found


def confidences(values: Tensor, open_set: OpenSet) -> Tensor | None:
    """Scores ``values`` (any shape) as confidences in ``[0, 1]`` (see the module's
    definition); ``None`` when the rule has no threshold (an open set turned off). A
    rule without a spread uses one unit of score."""
    t = open_set.threshold
    if math.isinf(t):
        return None
    spread = open_set.spread if open_set.spread else 1.0
    z = (values.double() - t) / spread
    return torch.sigmoid(math.log(ODDS_PER_SPREAD) * z).float()


def confidence(score: float, open_set: OpenSet) -> float | None:
    """One score's confidence in ``[0, 1]`` (see :func:`confidences`)."""
    c = confidences(torch.tensor([float(score)]), open_set)
    return None if c is None else float(c[0])
