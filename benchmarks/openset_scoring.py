"""Open-set scoring beyond one pooled vector, on the frozen fused bases: which score makes
enrolled words fire and other words not?

Issue 29 (item 4) asks to measure rules from speaker verification and from template
matching against the plain cosine to each word's centroid, on protocol 1's open set (the
clip-level measurement of ``metavox evaluate --open-set``: the same seeded episodes, the
same pool of targets and non-targets, one threshold over all episodes, detection of the
right word at 1% / 0.1% false accepts per non-target clip, EER, two-way bootstrap
intervals). Every rule scores the pool clip ``q`` against each enrolled word ``w``:

- ``centroid``: ``cos(q, c_w)``, ``c_w`` the normalised mean of the word's support unit
  vectors (the frozen baseline of the results tables);
- ``z-norm``: ``(s - mu_w) / sd_w``, the word's mean and spread over its ``topk`` highest
  scores against a cohort (clips of the run's training words: what enrollment has as
  negatives), so that every word's scores are on one scale (a per-word threshold);
- ``t-norm``: the same from the query's side: ``(s - mu_q) / sd_q`` over the query's ``topk``
  highest cohort scores (a query that resembles every word is discounted);
- ``s-norm``: the mean of the two (adaptive symmetric normalisation);
- ``support spread``: ``s`` minus the mean cosine of the word's own support clips to its
  centroid (a per-word threshold from the support's own spread; equal to ``centroid`` at 1
  shot);
- ``max pool``: ``centroid`` on features whose speech-embedding part max-pools the 16
  windows instead of averaging them;
- ``shift align``: the speech embedding's window sequences compared at the best of +-4
  window shifts (mean aligned cosine, averaged over the word's support clips), averaged
  with the ResNet cosine;
- ``DTW``: dynamic time warping of the speech embedding's window sequences (cost
  ``1 - cos``, symmetric steps, normalised by the path bound), averaged with the ResNet
  cosine (the local-wake idea; slow: ``--dtw-episodes``).

Needs a run on the ``fusion`` model (for the frozen rows: the one-iteration run of
docs/results.md, "Two bases and their fusion"), the Speech Commands test set and both
bases::

    python benchmarks/openset_scoring.py runs/frozen-fusion [--episodes 600] [--dtw-episodes 100]

It prints a Markdown table; ``--json FILE`` writes the figures. ``--choose-pool PART`` instead
compares mean- and max-pooled windows on another split of a fusion run, away from the test
words (e.g. the built-in synthetic corpus's training words, which the frozen bases never
saw, in a protocol 4 run): closed-set accuracy of the frozen centroid, and the open set
with the split's other words as the non-targets::

    python benchmarks/openset_scoring.py runs/synth-fusion-protomaml --choose-pool train
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metavox.engine.openset_eval import OpenSetScores, add_episode, summarize
from metavox.pipeline.build import build_run_data, make_sampler
from metavox.pipeline.evaluate import open_set_pool
from metavox.pipeline.train import load_trained

RESNET_DIM = 2048
SPEECH_DIM = 96

#: a scorer: (support rows [n, k], pool rows R) -> scores [R, n]
Scorer = Callable[[np.ndarray, np.ndarray], Tensor]


def split_fusion(x: Tensor) -> tuple[Tensor, Tensor]:
    """The ``fusion`` front-end's rows ``[N, 96 * W + 2048]`` as the speech embedding's
    windows ``[N, W, 96]`` and the ResNet's unit vector ``[N, 2048]``."""
    x = x.flatten(1).float()
    windows = (x.shape[1] - RESNET_DIM) // SPEECH_DIM
    speech = x[:, :SPEECH_DIM * windows].reshape(-1, SPEECH_DIM, windows).transpose(1, 2)
    return speech, F.normalize(x[:, SPEECH_DIM * windows:], dim=-1)


def fused(speech: Tensor, resnet: Tensor, pool: str = "mean") -> Tensor:
    """Both bases' unit vectors concatenated and normalised (the ``fusion`` model at its
    start), the speech windows mean- or max-pooled."""
    s = speech.mean(1) if pool == "mean" else speech.amax(1)
    return F.normalize(torch.cat([F.normalize(s, dim=-1), resnet], -1), dim=-1)


def centroids(feats: Tensor, support: np.ndarray) -> Tensor:
    """``[n, dim]``: each word's normalised mean support vector."""
    n, k = support.shape
    return F.normalize(feats[support.reshape(-1)].reshape(n, k, -1).mean(1), dim=-1)


def topk_stats(scores: Tensor, topk: int, dim: int) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of the ``topk`` highest ``scores`` along ``dim``."""
    top = scores.topk(min(topk, scores.shape[dim]), dim=dim).values
    return top.mean(dim), top.std(dim).clamp_min(1e-6)


def shift_similarity(a: Tensor, b: Tensor, max_shift: int) -> Tensor:
    """``[len(b), len(a)]``: the best over shifts ``-max_shift..max_shift`` of the mean
    cosine of aligned windows (``a``, ``b``: unit window vectors ``[*, W, dim]``)."""
    w = a.shape[1]
    best = None
    for d in range(-max_shift, max_shift + 1):
        x, y = (a[:, d:], b[:, :w - d]) if d >= 0 else (a[:, :w + d], b[:, -d:])
        s = torch.einsum("atf,btf->ba", x, y) / x.shape[1]
        best = s if best is None else torch.maximum(best, s)
    return best


def dtw_similarity(a: Tensor, b: Tensor) -> Tensor:
    """``[len(b), len(a)]``: ``1 - DTW cost / (W + W)`` with cost ``1 - cos`` between unit
    window vectors and symmetric steps (all pairs at once)."""
    cost = 1 - torch.einsum("aif,bjf->baij", a, b)
    n, m = cost.shape[-2:]
    acc = torch.full((*cost.shape[:2], n + 1, m + 1), float("inf"))
    acc[:, :, 0, 0] = 0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            prev = torch.minimum(torch.minimum(acc[:, :, i - 1, j], acc[:, :, i, j - 1]),
                                 acc[:, :, i - 1, j - 1])
            acc[:, :, i, j] = cost[:, :, i - 1, j - 1] + prev
    return 1 - acc[:, :, n, m] / (n + m)


def scorers(pool_x: Tensor, cohort_x: Tensor, topk: int) -> dict[str, Scorer]:
    """Every rule of the module docstring over the pool's and the cohort's features."""
    speech, resnet = split_fusion(pool_x)
    feats = fused(speech, resnet)
    feats_max = fused(speech, resnet, "max")
    windows = F.normalize(speech, dim=-1)
    c_speech, c_resnet = split_fusion(cohort_x)
    cohort = fused(c_speech, c_resnet)
    t_mu, t_sd = topk_stats(feats @ cohort.t(), topk, dim=1)  # per pool clip

    def centroid(support: np.ndarray, rows: np.ndarray) -> Tensor:
        return feats[rows] @ centroids(feats, support).t()

    def znorm(support: np.ndarray, rows: np.ndarray) -> Tensor:
        c = centroids(feats, support)
        mu, sd = topk_stats(cohort @ c.t(), topk, dim=0)
        return (feats[rows] @ c.t() - mu) / sd

    def tnorm(support: np.ndarray, rows: np.ndarray) -> Tensor:
        return (centroid(support, rows) - t_mu[rows, None]) / t_sd[rows, None]

    def snorm(support: np.ndarray, rows: np.ndarray) -> Tensor:
        return (znorm(support, rows) + tnorm(support, rows)) / 2

    def spread(support: np.ndarray, rows: np.ndarray) -> Tensor:
        n, k = support.shape
        c = centroids(feats, support)
        own = (feats[support.reshape(-1)].reshape(n, k, -1) * c[:, None]).sum(-1).mean(1)
        return feats[rows] @ c.t() - (own if k > 1 else 0)

    def max_pool(support: np.ndarray, rows: np.ndarray) -> Tensor:
        return feats_max[rows] @ centroids(feats_max, support).t()

    def sequence(similarity: Callable[[Tensor, Tensor], Tensor]) -> Scorer:
        def score(support: np.ndarray, rows: np.ndarray) -> Tensor:
            n, k = support.shape
            s = similarity(windows[support.reshape(-1)], windows[rows])
            s = s.reshape(len(rows), n, k).mean(-1)
            return (s + resnet[rows] @ centroids(resnet, support).t()) / 2
        return score

    return {"centroid": centroid, "z-norm": znorm, "t-norm": tnorm, "s-norm": snorm,
            "support spread": spread, "max pool": max_pool,
            "shift align": sequence(lambda a, b: shift_similarity(a, b, 4)),
            "DTW": sequence(dtw_similarity)}


def score_episodes(scorer: Scorer, sampler, labels: np.ndarray, episodes: int
                   ) -> OpenSetScores:
    """Every episode's target and non-target scores under ``scorer`` (as
    :func:`metavox.engine.openset_eval.score_pool` collects them for a model)."""
    out = OpenSetScores(pool_size=len(labels))
    for e in range(episodes):
        support, _, classes = sampler.episode_rows(e)
        keep = np.ones(len(labels), dtype=bool)
        keep[support.reshape(-1)] = False
        rows = np.flatnonzero(keep)
        add_episode(out, scorer(support, rows), rows, labels, classes)
    return out


def choose_pool(cfg, store, episodes: int) -> None:
    """Closed-set accuracy and open set of the frozen centroid with mean- and max-pooled
    windows on ``store`` (5-way, 5 queries; non-targets: the store's other words)."""
    labels = np.asarray(store.labels)
    speech, resnet = split_fusion(torch.from_numpy(store.take(range(len(store)))))
    print("| pool | shots | closed set | det at 1% / 0.1% | EER |\n|---|---|---|---|---|")
    for pool in ("mean", "max"):
        feats = fused(speech, resnet, pool)
        for k in (1, 5):
            sampler = make_sampler(store, replace(cfg.episodes, queries=5), seed=cfg.seed,
                                   stream="test", shots=k)
            hits = []
            for e in range(episodes):
                support, query, _ = sampler.episode_rows(e)
                pred = (feats[query.reshape(-1)] @ centroids(feats, support).t()).argmax(-1)
                truth = np.repeat(np.arange(len(support)), query.shape[1])
                hits.append(float((pred.numpy() == truth).mean()))

            def scorer(support: np.ndarray, rows: np.ndarray, f: Tensor = feats) -> Tensor:
                return f[rows] @ centroids(f, support).t()

            r = summarize(score_episodes(scorer, sampler, labels, episodes), boot=0)
            print(f"| {pool} | {k} | {100 * np.mean(hits):.1f} | "
                  f"{100 * r.detection['1%'][0]:.1f} / {100 * r.detection['0.1%'][0]:.1f} | "
                  f"{100 * r.eer[0]:.1f} |")


def load_fusion_run(run: str):
    """``(loaded run, its data)`` of a run on the ``fusion`` model (these studies read the
    fusion front-end: both bases); exits with a message for any other run."""
    loaded = load_trained(run)
    if loaded.config.model.name != "fusion":
        raise SystemExit(f"{run} is a {loaded.config.model.name!r} run; this study reads the "
                         "fusion front-end (both bases)")
    return loaded, build_run_data(loaded.config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run on the fusion model (e.g. runs/frozen-fusion)")
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--dtw-episodes", type=int, default=100,
                    help="episodes for the (slow) DTW rule")
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--topk", type=int, default=100, help="cohort scores per statistic")
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--choose-pool", default=None, metavar="PART",
                    help="compare mean and max pooling on this split (train, val) instead")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    loaded, data = load_fusion_run(args.run)
    cfg = loaded.config
    if args.choose_pool:
        choose_pool(cfg, data.parts[args.choose_pool], min(args.episodes, 300))
        return
    test, val, train = data.parts["test"], data.parts.get("val"), data.parts["train"]
    pool = open_set_pool(loaded, test, val)
    cohort = torch.from_numpy(train.take(range(len(train))))
    labels = np.asarray(pool.labels)
    rules = scorers(pool.x, cohort, args.topk)
    print(f"pool: {len(labels)} clips ({pool.test_words} + {pool.other_words} + "
          f"{pool.backgrounds} backgrounds); cohort: {len(cohort)} clips of "
          f"{len(set(train.labels))} training words; seed {cfg.seed}\n")
    shots = [int(s) for s in args.shots.split(",")]
    figures: dict[str, dict[str, dict]] = {}
    for name, scorer in rules.items():
        figures[name] = {}
        n_ep = args.dtw_episodes if name == "DTW" else args.episodes
        for k in shots:
            sampler = make_sampler(test, replace(cfg.episodes, queries=15), seed=cfg.seed,
                                   stream="test", shots=k)
            start = time.perf_counter()
            r = summarize(score_episodes(scorer, sampler, labels, n_ep), boot=args.boot,
                          seed=cfg.seed)
            figures[name][f"{k}-shot"] = {**r.to_dict(), "seconds": time.perf_counter() - start}
    cells = [f"{k}-shot: det at 1% / 0.1%, EER" for k in shots]
    print("| rule | episodes | " + " | ".join(cells) + " |")
    print("|---|---|" + "---|" * len(shots))

    def pct(v: list[float]) -> str:
        return f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}"

    for name, by_shot in figures.items():
        row = [f"{pct(f['detection']['1%'])} / {pct(f['detection']['0.1%'])}, {pct(f['eer'])}"
               for f in by_shot.values()]
        n_ep = next(iter(by_shot.values()))["episodes"]
        print(f"| {name} | {n_ep} | " + " | ".join(row) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)


if __name__ == "__main__":
    main()
