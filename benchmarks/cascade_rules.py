"""Which hops should the stream cascade verify? Detection, false accepts and the fraction
of hops the full model scores, for verifying every hop and for cascade rules, all on the
same recorded streams.

The streams are the stream protocol's (``metavox.kws.protocol.build_stream``: episodes
``0..--episodes-1``, 5 of protocol 1's 9 test words enrolled with 5 clips, 10 placements
each among 3 times as many other words, over pink noise); the model is the frozen nearest
centroid on the fusion base, its background open-set rule calibrated at 1% on generated
backgrounds and 300 clips of the 5 validation words (never placed in the streams). The
fusion features of every hop are computed once per stream; each rule then decides over
the same per-hop scores:

- ``every hop``: the full model on every hop, the moving average over ``smooth`` hops;
- ``first cascade``: the rule before the stride: every stage-1 candidate verified, with
  the ``smooth - 1`` hops before it, the same moving average, decisions at candidates;
- ``stride S``: the cascade of :mod:`metavox.kws.cascade`: a candidate verified when ``S``
  hops have passed since the last one verified, the mean of the verified windows among
  the last ``smooth`` hops, decisions at verified hops.

Detection and false accepts per 100 non-target words at the open set's threshold, and
the best detection with at most 1 and 5 false accepts per 100 words over thresholds
raised from it (the DET curve's low end)::

    python benchmarks/cascade_rules.py [--episodes 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from metavox.kws.cascade import (
    calibrate_stage1,
    cascade_scores,
    cascade_triggered,
    stage1_scores,
    verified_hops,
)
from metavox.kws.protocol import StreamConfig, build_stream, outcomes
from metavox.kws.spotter import SpotSettings, smoothed_scores, triggered

TEST_WORDS = ["eight", "five", "happy", "nine", "one", "six", "three", "two", "zero"]
VAL_WORDS = ("bed", "bird", "cat", "house", "tree")
#: thresholds swept above the calibrated one, in multiples of the negatives' spread
RAISES = np.linspace(0.0, 4.0, 41)


def first_cascade(candidates: np.ndarray, smooth: int) -> np.ndarray:
    """The hops the first cascade verified: every candidate and the ``smooth - 1`` before."""
    out = candidates.copy()
    for k in range(1, smooth):
        out[:-k] |= candidates[k:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=os.environ.get("METAVOX_TEST_DATA", "../shared/data"))
    args = ap.parse_args()
    from cascade_speed import enrolled  # this folder's: the same enrollment

    from metavox.data import Corpus
    from metavox.kws.cascade import fusion_stream_features

    torch.set_num_threads(args.threads)
    root = Path(args.data) / "speech_commands_v2_test"
    if not root.is_dir():
        raise SystemExit(f"no Speech Commands under {args.data} (set --data)")
    corpus = Corpus.from_preset("speech-commands", root)
    rng = np.random.default_rng(0)
    others = sorted(u.path for u in corpus if u.label in VAL_WORDS)
    negatives = [others[i] for i in np.sort(rng.permutation(len(others))[:300])]
    settings = SpotSettings()
    rules = [("every hop", None, None)] + [("first cascade", 0.05, 0), ("first cascade", 0.1, 0)]
    rules += [(f"stride {s}", f, s) for f in (0.05, 0.1, 0.2) for s in (1, 2, 4)]
    tally = {(n, f): np.zeros((len(RAISES), 2)) for n, f, _ in rules}
    verified = {(n, f): 0 for n, f, _ in rules}
    targets = words = hops = 0
    for e in range(args.episodes):
        stream = build_stream(corpus, TEST_WORDS, StreamConfig(shots=(5,)), e, 16000,
                              exclude=set(VAL_WORDS))
        adapted = enrolled("fusion", stream, negatives, None)
        s = settings.resolve(adapted.frontend)
        times, feats = fusion_stream_features(stream.wave, adapted.frontend)
        with torch.no_grad():
            values = torch.cat([adapted.values(feats[i:i + 512], adapted.open_set)
                                for i in range(0, len(feats), 512)])
        first = stage1_scores(adapted, feats)
        base, spread = adapted.open_set.threshold, adapted.open_set.spread or 1.0
        targets += sum(p.target for p in stream.placements)
        words += stream.nontarget_words
        hops += len(times)
        for name, far, stride in rules:
            if far is None:
                ver = np.ones(len(times), dtype=bool)
                best, scores = smoothed_scores(values, s.smooth)
                decide = ver
            else:
                cand = first >= calibrate_stage1(adapted, far).threshold
                if stride == 0:
                    ver = first_cascade(cand, s.smooth)
                    best, scores = smoothed_scores(values, s.smooth)
                    decide = cand
                else:
                    ver = verified_hops(cand, stride)
                    best, scores = cascade_scores(values, ver, s.smooth)
                    decide = ver
            verified[(name, far)] += int(ver.sum())
            for j, raise_by in enumerate(RAISES):
                t = base + raise_by * spread
                fired = (triggered(times, best, scores, t, s.refractory_seconds)
                         if far is None else
                         cascade_triggered(times, best, scores, decide, t, s.refractory_seconds))
                got = outcomes(stream, [(stream.words[best[i]], float(times[i]))
                                        for i in fired], StreamConfig().tolerance)
                tally[(name, far)][j] += (sum(o.hit for o in got), sum(not o.hit for o in got))
        print(f"stream {e + 1}/{args.episodes} done", flush=True)
    print(f"\n{args.episodes} streams: {targets} target words, {words} non-target words; "
          f"frozen nearest centroid on the fusion, 5 clips per word; open set at 1%\n")
    print("| rule | stage 1 passes | detection at the open set's threshold | false accepts "
          "per 100 words there | best detection at <= 1 / <= 5 per 100 words | hops "
          "verified |\n|---|---|---|---|---|---|")
    for name, far in tally:
        det = tally[(name, far)][:, 0] / targets
        fa = 100 * tally[(name, far)][:, 1] / words

        def best_at(limit: float, det: np.ndarray = det, fa: np.ndarray = fa) -> float:
            ok = det[fa <= limit]
            return 100 * float(ok.max()) if len(ok) else 0.0

        print(f"| {name} | {'-' if far is None else f'{far:g}'} | {100 * det[0]:.1f}% | "
              f"{fa[0]:.1f} | {best_at(1.0):.1f}% / {best_at(5.0):.1f}% | "
              f"{100 * verified[(name, far)] / hops:.1f}% |")


if __name__ == "__main__":
    main()
