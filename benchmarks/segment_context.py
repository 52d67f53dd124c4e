"""Choose the segment decision's context on validation words, not test words.

Streams built as the stream protocol builds them (:mod:`metavox.kws.protocol`), but
enrolling the run's *validation* words (non-targets: every other word the run did not
meta-train on), scored with one decision per speech segment
(``SpotSettings(decision="segments")``) for several ``SegmentSettings.context_ms``: how
much audio either side of a segment its window keeps, zeros beyond (a very large value
keeps the whole window, neighbouring words in view). Prints the best detection at
<= 1 / 2 / 5 false accepts per 100 non-target words, for the run's meta-learner and the
frozen nearest centroid, with the clip calibration of ``metavox streams``.

    python benchmarks/segment_context.py runs/p1-fusion-reject-max [--contexts 100,250,500,10000]
        [--episodes 12] [--shots 5]
"""

from __future__ import annotations

import argparse

import torch

from metavox.kws.protocol import StreamConfig, evaluate_streams
from metavox.kws.report import stream_corpus
from metavox.kws.segments import SegmentSettings
from metavox.kws.spotter import SpotSettings
from metavox.meta import ProtoNet
from metavox.pipeline.build import build_model, build_run_data
from metavox.pipeline.enroll import negative_pool
from metavox.pipeline.train import load_trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--contexts", default="100,250,500,10000", help="context_ms values")
    ap.add_argument("--episodes", type=int, default=12)
    ap.add_argument("--shots", type=int, default=5)
    args = ap.parse_args()
    loaded = load_trained(args.run)
    data = build_run_data(loaded.config)
    if "val" not in data.parts:
        raise SystemExit(f"{args.run}'s split has no validation words")
    words = sorted(set(data.parts["val"].labels))
    torch.manual_seed(loaded.config.seed + 13)  # the same baseline as `metavox streams`
    fresh = build_model(loaded.config, (loaded.frontend.num_features,
                                        loaded.frontend.num_frames), len(words))
    methods = {loaded.config.algorithm.name: loaded.algo, "nearest centroid": ProtoNet(fresh)}
    negatives = negative_pool(loaded)
    print(f"validation words enrolled: {', '.join(words)}; {args.episodes} streams, "
          f"{args.shots} clips; best detection at <= 1 / 2 / 5 FA per 100 non-target words")
    for ctx in (float(c) for c in args.contexts.split(",")):
        settings = SpotSettings(decision="segments", segments=SegmentSettings(context_ms=ctx))
        cfg = StreamConfig(episodes=args.episodes, ways=len(words), shots=(args.shots,),
                           calibration="clips", seed=loaded.config.seed, settings=settings)
        for r in evaluate_streams(methods, stream_corpus(data, "val"), words,
                                  loaded.frontend, negatives, cfg,
                                  exclude=set(data.parts["train"].labels)):
            print(f"context {ctx:>7g} ms  {r.method:<18}"
                  + " / ".join(f"{100 * r.rate_at_per_100_words(m):5.1f}" for m in (1, 2, 5))
                  + f"%   ({r.targets} targets, {r.nontarget_words} non-target words)",
                  flush=True)


if __name__ == "__main__":
    main()
