"""Clip-level open-set evaluation: does an adapted model fire on its enrolled words and on
nothing else?

Per episode, the N enrolled words' K support clips adapt the model (exactly the episodes
of the closed-set evaluation, from the same sampler). Then every clip of a *pool* is
scored:

- **targets**: the enrolled words' other clips; a target is *detected* at threshold ``t``
  when the adapted model's best word is the right one and its score is ``>= t``;
- **non-targets**: every clip of a word that is not enrolled (the other test words, and
  whatever else the pool holds: validation and unused words, backgrounds); it is a *false
  accept* when its best score is ``>= t``.

A clip's score is its best word's value under the open-set rule (``"logit"``: the logit,
for a prototype head on normalised features a monotone function of the distance to the
nearest prototype; ``"probability"``: the softmax probability).

One threshold is taken over all episodes' non-target scores (a single operating point, as
a deployed rule has: a learned rejection must make scores comparable across enrollments),
so rates as low as 0.01% are resolved by the pooled non-targets. Reported: detection of
the right word at stated rates of false accepts per non-target clip, and the equal error
rate (miss rate, counting misnamed targets as misses, equal to the false-accept rate).
95% intervals come from a two-way bootstrap: episodes and pool clips are resampled
together (a non-target clip repeats in every episode that does not enroll its word, so
resampling episodes alone would understate the spread).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metavox.data.episodes import EpisodeSampler
from metavox.meta import MetaAlgorithm

#: false accepts per non-target clip at which detection is reported
FARS = (0.01, 0.001, 0.0001)
RULES = ("logit", "probability")


@dataclass
class OpenSetScores:
    """Every episode's scores: ``target_score[e]`` / ``target_correct[e]`` /
    ``target_clip[e]`` (pool indices) for its targets, ``nontarget_score[e]`` /
    ``nontarget_clip[e]`` for its non-targets."""

    target_score: list[np.ndarray] = field(default_factory=list)
    target_correct: list[np.ndarray] = field(default_factory=list)
    target_clip: list[np.ndarray] = field(default_factory=list)
    nontarget_score: list[np.ndarray] = field(default_factory=list)
    nontarget_clip: list[np.ndarray] = field(default_factory=list)
    pool_size: int = 0

    @property
    def episodes(self) -> int:
        return len(self.target_score)


def score_pool(algo: MetaAlgorithm, sampler: EpisodeSampler, pool_x: Tensor,
               pool_labels: Sequence[str], episodes: int, *, rule: str = "logit",
               device: torch.device | str = "cpu", batch: int = 1024,
               progress: Callable[[int, int], None] | None = None) -> OpenSetScores:
    """Adapt ``algo`` to the support set of each of ``sampler``'s episodes
    ``0..episodes-1`` and score the pool: ``pool_x [P, ...]`` (one example each, as the
    sampler's ``store`` gives them, with the channel axis the model expects), labelled
    ``pool_labels``. The sampler's store must be the pool's first rows (the support rows
    are left out of the targets)."""
    if rule not in RULES:
        raise ValueError(f"open-set rule must be one of {RULES}, got {rule!r}")
    labels = np.asarray(pool_labels)
    if len(labels) != len(pool_x):
        raise ValueError(f"{len(pool_x)} pool clips but {len(labels)} labels")
    store = sampler.store
    if len(store) > len(labels) or any(a != b for a, b in zip(store.labels, labels,
                                                               strict=False)):
        raise ValueError("the sampler's store must be the pool's first rows")
    out = OpenSetScores(pool_size=len(labels))
    was_training = algo.training
    algo.eval()
    algo.to(device)
    try:
        for e in range(episodes):
            support, _, classes = sampler.episode_rows(e)
            n, k = support.shape
            sx = pool_x[support.reshape(-1)].to(device)
            sy = torch.arange(n).repeat_interleave(k).to(device)
            learner = algo.adapt(sx, sy)
            keep = np.ones(len(labels), dtype=bool)
            keep[support.reshape(-1)] = False
            rows = np.flatnonzero(keep)
            with torch.no_grad():
                values = torch.cat([learner.module(pool_x[rows[i:i + batch]].to(device))
                                    for i in range(0, len(rows), batch)]).float().cpu()
            if rule == "probability":
                values = values.softmax(-1)
            add_episode(out, values[:, :n], rows, labels, classes)
            if progress is not None:
                progress(e + 1, episodes)
    finally:
        algo.train(was_training)
    return out


def add_episode(out: OpenSetScores, values: Tensor, rows: np.ndarray, labels: np.ndarray,
                classes: Sequence[str]) -> None:
    """Append one episode to ``out``: ``values [len(rows), len(classes)]`` scores the pool
    clips ``rows`` (labelled ``labels[rows]``) for the episode's enrolled ``classes``; a
    clip of an enrolled word is a target (right when its best class is its word), any
    other a non-target, each scored by its best class's value."""
    score, best = values.max(-1)
    word = {c: i for i, c in enumerate(classes)}
    truth = np.array([word.get(x, -1) for x in labels[rows]])
    target = truth >= 0
    out.target_score.append(score.numpy()[target])
    out.target_correct.append(best.numpy()[target] == truth[target])
    out.target_clip.append(rows[target])
    out.nontarget_score.append(score.numpy()[~target])
    out.nontarget_clip.append(rows[~target])


@dataclass
class OpenSetResult:
    """Detection of the right word at each false-accept rate (``detection[far] = [mean,
    ci95]``, per non-target clip), the equal error rate, and a DET curve (``det``: false
    accepts per non-target clip and miss rate, on a grid)."""

    detection: dict[str, list[float]]
    eer: list[float]
    episodes: int
    targets: int
    nontargets: int
    det: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"detection": self.detection, "eer": self.eer, "episodes": self.episodes,
                "targets": self.targets, "nontargets": self.nontargets, "det": self.det}


def _far_key(far: float) -> str:
    return f"{100 * far:g}%"


class _Pooled:
    """The scores pooled over episodes, sorted once, with what a bootstrap reweights."""

    def __init__(self, s: OpenSetScores) -> None:
        ep_n = np.concatenate([np.full(len(x), e) for e, x in enumerate(s.nontarget_score)])
        ep_t = np.concatenate([np.full(len(x), e) for e, x in enumerate(s.target_score)])
        neg = np.concatenate(s.nontarget_score)
        order = np.argsort(-neg, kind="stable")  # descending
        self.neg = neg[order]
        self.neg_ep, self.neg_clip = ep_n[order], np.concatenate(s.nontarget_clip)[order]
        self.pos = np.concatenate(s.target_score)
        self.pos_ok = np.concatenate(s.target_correct)
        self.pos_ep, self.pos_clip = ep_t, np.concatenate(s.target_clip)
        self.episodes, self.pool = s.episodes, s.pool_size

    def weights(self, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        if rng is None:
            return np.ones(len(self.neg)), np.ones(len(self.pos))
        w_ep = rng.multinomial(self.episodes, np.full(self.episodes, 1 / self.episodes))
        w_clip = rng.multinomial(self.pool, np.full(self.pool, 1 / self.pool))
        return (w_ep[self.neg_ep] * w_clip[self.neg_clip]).astype(np.float64), \
            (w_ep[self.pos_ep] * w_clip[self.pos_clip]).astype(np.float64)

    def rates(self, wn: np.ndarray, wp: np.ndarray, fars: Sequence[float]
              ) -> tuple[list[float], float]:
        """Detection at each of ``fars`` and the EER, under weights ``wn`` / ``wp``."""
        total_n, total_p = wn.sum(), wp.sum()
        cum = np.cumsum(wn)  # false accepts at each threshold = the i-th highest score
        det = []
        for far in fars:
            # reject the first non-target whose acceptance would exceed the allowed weight
            # (and every score up to it): accept scores strictly above it
            i = int(np.searchsorted(cum, far * total_n, side="right"))
            thr = self.neg[i] if i < len(self.neg) else -np.inf
            ok = (self.pos > thr) & self.pos_ok
            det.append(float((wp * ok).sum() / total_p) if total_p else math.nan)
        # EER: the smallest max(false-accept rate, miss rate) over thresholds at each
        # non-target score, accepting scores >= it or > it (the crossing of the two steps)
        asc = self.neg[::-1]
        tail_n = np.concatenate([cum[::-1], [0.0]])  # weight of asc[j:], the n - j highest
        ok = np.argsort(self.pos[self.pos_ok], kind="stable")
        ok_asc, w_ok = self.pos[self.pos_ok][ok], wp[self.pos_ok][ok]
        tail_p = np.concatenate([np.cumsum(w_ok[::-1])[::-1], [0.0]])
        best = 1.0
        for side in ("left", "right"):  # accept >= v, accept > v
            far_v = tail_n[np.searchsorted(asc, asc, side=side)] / total_n
            miss_v = 1.0 - tail_p[np.searchsorted(ok_asc, asc, side=side)] / total_p
            best = min(best, float(np.maximum(far_v, miss_v).min()))
        return det, best

    def det_curve(self, points: int = 60) -> dict[str, list[float]]:
        wn, wp = self.weights(None)
        grid = np.geomspace(max(1.0 / len(self.neg), 1e-5), 1.0, points)
        det, _ = self.rates(wn, wp, list(grid))
        return {"far": [float(x) for x in grid], "miss": [1.0 - d for d in det]}


def summarize(scores: OpenSetScores, fars: Sequence[float] = FARS, *, boot: int = 200,
              seed: int = 0) -> OpenSetResult:
    """Detection at ``fars`` and the EER over all episodes, with 95% intervals from
    ``boot`` two-way bootstrap replicates (episodes and pool clips)."""
    if scores.episodes == 0:
        raise ValueError("no episodes to summarize")
    pooled = _Pooled(scores)
    det, eer = pooled.rates(*pooled.weights(None), fars)
    rng = np.random.default_rng([seed, 29])
    reps = [pooled.rates(*pooled.weights(rng), fars) for _ in range(boot)]
    detection = {}
    for i, far in enumerate(fars):
        vals = np.array([r[0][i] for r in reps])
        detection[_far_key(far)] = [det[i], _half_width(vals)]
    eer_ci = _half_width(np.array([r[1] for r in reps]))
    return OpenSetResult(detection, [eer, eer_ci], scores.episodes, len(pooled.pos),
                         len(pooled.neg), pooled.det_curve())


def _half_width(values: np.ndarray) -> float:
    """Half the width of the central 95% of bootstrap replicates."""
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return math.nan
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float((hi - lo) / 2)
