"""What an enrollment tells the person to expect (metavox.pipeline.expect): held-out scores
are the scores of a model enrolled without the clip, an outlier clip and two near-identical
words are flagged, the expected rates match cases whose answer is known, and the readable
confidence is what its definition says. Pure: 2-D points as "features", ProtoNet's rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from metavox.audio.features import FrontendConfig
from metavox.meta import Learner
from metavox.meta.openset import OpenSet
from metavox.meta.protonet import PrototypeClassifier, prototypes
from metavox.pipeline.enroll import Adapted, negative_values, open_set_from
from metavox.pipeline.expect import (
    Evidence,
    Expectations,
    confidence,
    confidences,
    expectations,
    held_out_values,
    wilson,
)


def adapt(x: torch.Tensor, y: torch.Tensor, words: list[str]) -> Learner:
    """ProtoNet on the identity embedding: the prototypes are the points' class means."""
    protos = prototypes(x.flatten(1), y, len(words))
    return Learner(PrototypeClassifier(nn.Flatten(), protos), words, kind="prototypes",
                   info={"ways": len(words), "dim": protos.shape[1]})


def enrolled(centers: list[tuple[float, float]], per_word: int, *, noise: float = 0.1,
             seed: int = 0, far: float = 0.05, rule: str = "logit"):
    """Points around ``centers`` (one word each) as a support set, negatives spread around
    them (none within 8 of a center), and the enrolled model, calibrated to ``far`` of the
    negatives (the logit rule: minus the squared distance to the word's mean)."""
    rng = np.random.default_rng(seed)
    words = [f"w{k}" for k in range(len(centers))]
    pts = np.concatenate([np.asarray(c) + noise * rng.standard_normal((per_word, 2))
                          for c in centers])
    x = torch.tensor(pts, dtype=torch.float32).view(-1, 1, 1, 2)
    y = torch.arange(len(centers)).repeat_interleave(per_word)
    box = rng.uniform(-20, 60, (2000, 2))
    near = np.linalg.norm(box[:, None] - np.asarray(centers)[None], axis=-1).min(1)
    neg = torch.tensor(box[near > 8][:400], dtype=torch.float32).view(-1, 1, 1, 2)
    adapted = Adapted(adapt(x, y, words), FrontendConfig())
    values, bank = negative_values(adapted, [neg], rule=rule, seed=0)
    adapted.open_set = open_set_from(values, bank, far=far, rule=rule)
    return adapted, x, y, words, values


def evidence_of(adapted, x, y, words, values) -> Evidence:
    return Evidence(held_out_values(adapted, lambda a, b: adapt(a, b, words), x, y), y, values)


def test_held_out_scores_are_those_of_a_model_enrolled_without_the_clip():
    adapted, x, y, words, _ = enrolled([(0, 0), (40, 0), (0, 40)], 4)
    held = held_out_values(adapted, lambda a, b: adapt(a, b, words), x, y)
    pts = x.flatten(1)
    for i in range(len(y)):
        # fold r leaves out the r-th clip of every word (4 clips each: position i % 4)
        kept = torch.arange(len(y)) % 4 != i % 4
        protos = torch.stack([pts[(y == k) & kept].mean(0) for k in range(3)])
        want = -(pts[i] - protos).pow(2).sum(-1)
        torch.testing.assert_close(held[i], want)
    # a word with one clip is never held out; the others still are
    x1, y1 = torch.cat([x[:8], x[8:9]]), torch.cat([y[:8], y[8:9]])
    held = held_out_values(adapted, lambda a, b: adapt(a, b, words), x1, y1)
    assert held[8].isnan().all() and not held[:8].isnan().any()


def test_an_outlier_clip_is_flagged_and_nothing_else():
    adapted, x, y, words, values = enrolled([(0, 0), (40, 0), (0, 40)], 4)
    x = x.clone()
    x[6, 0, 0] = torch.tensor([40.0, 12.0])  # the 3rd clip of w1 was something else
    adapted = Adapted(adapt(x, y, words), adapted.frontend, adapted.open_set)
    exp = adapted_expectations(adapted, x, y, words, values)
    outliers = [w for w in exp.warnings if w.kind == "outlier"]
    assert [(w.words, w.clip) for w in outliers] == [(["w1"], 3)], exp.warnings
    assert "clip 3 of 'w1' sounds different" in outliers[0].message
    w1 = exp.words[1]
    assert (w1.clips, w1.held_out, w1.detected) == (4, 4, 3)
    assert all(w.detected == w.held_out == 4 for k, w in enumerate(exp.words) if k != 1)
    assert not [w for w in exp.warnings if w.kind == "confusable"]


def adapted_expectations(adapted, x, y, words, values) -> Expectations:
    adapted.evidence = evidence_of(adapted, x, y, words, values)
    return adapted.expectations()


def test_two_near_identical_words_are_flagged_as_confusable():
    adapted, x, y, words, values = enrolled([(0, 0), (0.05, 0), (40, 0)], 3, noise=0.3)
    exp = adapted_expectations(adapted, x, y, words, values)
    pairs = [w.words for w in exp.warnings if w.kind == "confusable"]
    assert pairs == [["w0", "w1"]], exp.warnings
    # the same words far apart: no warning of any kind
    adapted, x, y, words, values = enrolled([(0, 0), (0, 40), (40, 0)], 3, noise=0.3)
    assert adapted_expectations(adapted, x, y, words, values).warnings == []


def test_expectations_match_a_case_with_a_known_answer():
    nan = math.nan
    held = torch.tensor([[5.0, -9], [4, -9], [6, -9], [-5, -9],  # a: 3 of 4 over 0
                         [-9, 2], [-9, 3],                     # b: 2 of 2
                         [nan, nan]])                          # c: 1 clip, never held out
    held = torch.cat([held, torch.full((7, 1), -20.0)], 1)
    held[6] = nan
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    neg = torch.full((10, 3), -3.0)
    neg[0, 0] = neg[1, 0] = 1.0  # two negatives taken for a
    neg[2, 1] = 0.5  # one for b
    neg[3, 2] = -0.5  # c's best, but under the threshold
    open_set = OpenSet("logit", 0.0, 0.2, 10, spread=2.0)
    exp = expectations(Evidence(held, labels, neg), ["a", "b", "c"], open_set)
    a, b, c = exp.words
    assert (a.clips, a.held_out, a.detected, a.detection) == (4, 4, 3, 0.75)
    assert (a.detection_low, a.detection_high) == pytest.approx(wilson(3, 4))
    assert wilson(3, 4) == pytest.approx((0.3006, 0.9544), abs=1e-4)
    assert wilson(3, 3)[0] == pytest.approx(0.4385, abs=1e-4)  # "3 of 3": as low as 44%
    assert (b.detected, b.held_out, b.detection) == (2, 2, 1.0)
    assert (c.clips, c.held_out, c.detection) == (1, 0, None)
    assert [w.false_accepts_per_100 for w in exp.words] == [20.0, 10.0, 0.0]
    assert all(w.negatives == 10 for w in exp.words)
    kinds = sorted((w.kind, tuple(w.words), w.clip) for w in exp.warnings)
    assert kinds == [("few_clips", ("c",), None), ("outlier", ("a",), 4)]
    assert "coarse" in exp.note and exp.threshold == 0.0
    assert Expectations.from_dict(exp.to_dict()) == exp
    table = exp.table()
    assert "3/4 = 75% (95%: 30%-95%)" in table and "n/a (1 clip)" in table
    # without an open set every negative is some word's false accept
    free = expectations(Evidence(held, labels, neg), ["a", "b", "c"], OpenSet("logit"))
    assert sum(w.false_accepts_per_100 for w in free.words) == 100.0 and free.threshold is None
    # no open set and no negatives (metavox adapt --no-open-set): detection is accuracy
    bare = expectations(Evidence(held, labels), ["a", "b", "c"], OpenSet("logit"))
    assert [(w.detected, w.false_accepts_per_100) for w in bare.words] == [
        (4, None), (2, None), (0, None)]
    assert "n/a" in bare.table() and "False accepts" not in bare.note


def test_confidence_is_one_half_at_the_threshold_and_nine_to_one_a_spread_above():
    o = OpenSet("logit", 1.0, 0.01, 100, spread=0.5)
    assert confidence(1.0, o) == pytest.approx(0.5)
    assert confidence(1.5, o) == pytest.approx(0.9)
    assert confidence(2.0, o) == pytest.approx(81 / 82)
    assert confidence(0.5, o) == pytest.approx(0.1)
    c = confidences(torch.linspace(-5, 5, 11), o)
    assert bool((c.diff() > 0).all()) and float(c.min()) >= 0 and float(c.max()) <= 1
    assert confidence(3.0, OpenSet("logit")) is None  # no threshold: nothing to read
