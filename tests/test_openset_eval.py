"""Clip-level open-set evaluation: rates on scores with known answers, the pool scored per
episode (targets, non-targets, support left out), deterministic, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metavox.data import ClassEpisodeSampler
from metavox.data.cache import write_feature_store
from metavox.engine.openset_eval import OpenSetScores, score_pool, summarize
from metavox.meta import create_algorithm
from metavox.models import create_model


def _known(episodes: int = 2) -> OpenSetScores:
    """1,000 non-target clips per episode scoring 0.000 ... 0.999; 100 targets per episode:
    50 right at 0.995, 25 right at 0.5, 25 misnamed at 0.999."""
    s = OpenSetScores(pool_size=1100)
    for _ in range(episodes):
        s.nontarget_score.append(np.arange(1000) / 1000.0)
        s.nontarget_clip.append(np.arange(1000))
        s.target_score.append(np.r_[np.full(50, 0.995), np.full(25, 0.5), np.full(25, 0.999)])
        s.target_correct.append(np.r_[np.ones(75, bool), np.zeros(25, bool)])
        s.target_clip.append(np.arange(1000, 1100))
    return s


def test_rates_on_known_scores() -> None:
    res = summarize(_known(), fars=(0.01, 0.001, 0.6), boot=50)
    # 1%: 20 of 2,000 false accepts allowed -> accept scores above 0.989: the 0.995 ones
    assert res.detection["1%"][0] == pytest.approx(0.5)
    # 0.1%: 2 allowed -> accept above 0.998: none of the right ones (0.999 are misnamed)
    assert res.detection["0.1%"][0] == pytest.approx(0.0)
    # 60%: accept above 0.399 -> every right target, never the misnamed
    assert res.detection["60%"][0] == pytest.approx(0.75)
    # EER: above 0.5 half the targets are missed while 1 - t of the non-targets pass; the
    # two meet at t = 0.5 (below it the misses drop to the misnamed 25%, the false accepts
    # rise past 50%)
    assert res.eer[0] == pytest.approx(0.5, abs=0.002)
    assert res.targets == 200 and res.nontargets == 2000 and res.episodes == 2
    # the DET curve's miss rate never rises as more false accepts are allowed
    miss = np.array(res.det["miss"])
    assert np.all(np.diff(miss) <= 1e-12) and miss[-1] == pytest.approx(0.25)


def test_bootstrap_intervals_shrink_with_more_episodes() -> None:
    rng = np.random.default_rng(0)

    def noisy(episodes: int) -> OpenSetScores:
        s = OpenSetScores(pool_size=400)
        for _ in range(episodes):
            s.nontarget_score.append(rng.normal(0, 1, 300))
            s.nontarget_clip.append(rng.choice(300, 300, replace=False))
            s.target_score.append(rng.normal(2.5, 1, 100))
            s.target_correct.append(rng.random(100) < 0.95)
            s.target_clip.append(300 + np.arange(100))
        return s

    few, many = summarize(noisy(10), boot=100), summarize(noisy(200), boot=100)
    assert 0 < many.detection["1%"][1] < few.detection["1%"][1]
    assert 0.2 < many.detection["1%"][0] < 0.8 and 0 < many.eer[0] < 0.2
    again = summarize(noisy(10), boot=100, seed=0)
    assert np.isfinite(again.detection["1%"][1])


def _clusters(tmp_path, words: int = 8, clips: int = 12, dim: int = 16):
    """Well separated words: each a tight cluster around its own unit direction."""
    rng = np.random.default_rng(3)
    centres = np.eye(dim)[:words] * 4.0
    x = np.concatenate([c + 0.1 * rng.standard_normal((clips, dim)) for c in centres])
    labels = [f"w{i}" for i in range(words) for _ in range(clips)]
    return write_feature_store(tmp_path / "store", x[:, None, :].astype(np.float32), labels,
                               ["s"] * len(labels))


def test_pool_scoring_separable_words(tmp_path) -> None:
    store = _clusters(tmp_path)
    test = store.filter(labels=[f"w{i}" for i in range(5)])  # 5 test words first ...
    extra = store.filter(labels=["w5", "w6", "w7"])  # ... then 3 other words
    pool_x = torch.from_numpy(np.concatenate([test.take(range(len(test))),
                                              extra.take(range(len(extra)))]))
    pool_labels = list(test.labels) + list(extra.labels)
    sampler = ClassEpisodeSampler(test, ways=3, shots=2, queries=2, seed=1)
    model = create_model("mlp", num_classes=3, input_shape=(1, 16), hidden=[16])
    algo = create_algorithm("protonet", model)
    scores = score_pool(algo, sampler, pool_x, pool_labels, 6)
    assert scores.episodes == 6 and scores.pool_size == 96
    for e in range(6):
        support, _, classes = sampler.episode_rows(e)
        enrolled = {pool_labels[i] for i in support.reshape(-1)}
        assert enrolled == set(classes)
        t, n = scores.target_clip[e], scores.nontarget_clip[e]
        assert not set(support.reshape(-1)) & set(t) and not set(support.reshape(-1)) & set(n)
        assert {pool_labels[i] for i in t} == enrolled and len(t) == 3 * 12 - 6
        assert not {pool_labels[i] for i in n} & enrolled and len(n) == 96 - 36
    again = score_pool(algo, sampler, pool_x, pool_labels, 6)
    for a, b in zip(scores.nontarget_score, again.nontarget_score, strict=True):
        np.testing.assert_array_equal(a, b)
    res = summarize(scores, fars=(0.01,), boot=20)
    assert res.detection["1%"][0] == pytest.approx(1.0) and res.eer[0] == pytest.approx(0.0)


def test_pool_must_start_with_the_samplers_store(tmp_path) -> None:
    store = _clusters(tmp_path)
    test = store.filter(labels=["w0", "w1", "w2"])
    sampler = ClassEpisodeSampler(test, ways=2, shots=1, queries=1, seed=0)
    algo = create_algorithm("protonet", create_model("mlp", num_classes=2, input_shape=(1, 16)))
    x = torch.from_numpy(store.take(range(len(store))))
    with pytest.raises(ValueError, match="first rows"):
        score_pool(algo, sampler, x.flip(0), list(store.labels)[::-1], 1)
    with pytest.raises(ValueError, match="rule"):
        score_pool(algo, sampler, x, list(store.labels), 1, rule="magic")
