"""The stream cascade on the fusion base: real-time factor on one core of

- ``speech embedding``: a spotter on the speech embedding alone (its incremental front-end,
  nearest centroid and the decision rule: what ``metavox listen`` runs on that base);
- ``fusion, every hop``: a spotter on the fusion (both bases) running the full model on
  every 80 ms hop (``Spotter(cascade=False)``; the speech embedding still incremental);
- ``fusion, cascade``: the same model with the cascade (:mod:`metavox.kws.cascade`): the
  speech embedding's stage 1 every hop, the full model on candidate windows only, one
  every ``stride`` hops within a run of them (the default stride);
- ``cascade, stride 1``: the same, verifying every candidate;
- ``fusion, segments`` and ``speech embedding, segments``: one decision per speech
  segment (``SpotSettings(decision="segments")``, :mod:`metavox.kws.segments`): the
  live energy segmenter, and the full model once per segment;

with the fraction of hops verified and the detections each makes. The words are enrolled
(5 words, 5 clips each) and the stream built as the stream protocol does, from Speech
Commands (``--data``, default ``../shared/data``), cut to ``--seconds``; the open set is
the background rule calibrated at 1% on generated backgrounds and 300 clips of other
words. The model: frozen nearest centroid on the bases (default), or the meta-learner of
a fusion run (``--run``; its speech-embedding counterpart stays nearest centroid).
Real-time factor = processing seconds / audio seconds (median over ``--repeats``), with
``torch.set_num_threads(threads)`` (1: "one core").

    python benchmarks/cascade_speed.py [--seconds 120] [--repeats 3] [--threads 1]
        [--run runs/sc-fusion-protomaml] [--cascade-far 0.05]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from metavox.audio.features import FrontendConfig
from metavox.kws.spotter import SpotSettings, Spotter
from metavox.pipeline.enroll import Adapted


def timed(spotter: Spotter, wave: np.ndarray, rate: int, chunk: int = 1600
          ) -> tuple[float, list[tuple[str, float]]]:
    """Real-time factor of feeding ``wave`` in 100 ms chunks, and the detections."""
    found = []
    t0 = time.perf_counter()
    for i in range(0, len(wave), chunk):
        found += [(d.word, round(d.time, 2)) for d in spotter.feed(wave[i:i + chunk])]
    found += [(s.detection.word, round(s.time, 2)) for s in spotter.finish()
              if s.detection is not None]
    return (time.perf_counter() - t0) / (len(wave) / rate), found


def enrolled(kind: str, stream, negative_paths: list[str], run: str | None) -> Adapted:
    """Nearest centroid (or ``run``'s meta-learner) on ``kind``'s base, enrolled on the
    stream's clips, the background rule calibrated at 1%."""
    from metavox.meta import ProtoNet
    from metavox.models import create_model, model_frontend
    from metavox.pipeline.enroll import builtin_negatives, calibrate_open_set, featurize

    fe = FrontendConfig(**model_frontend(kind))
    x = featurize([Path(p) for w in stream.words for p in stream.enroll[w]], fe)
    y = torch.arange(len(stream.words)).repeat_interleave(len(stream.enroll[stream.words[0]]))
    if run is not None:
        from metavox.pipeline.train import load_trained

        loaded = load_trained(run)
        if loaded.frontend != fe:
            raise SystemExit(f"{run} is not a run on the {kind} base")
        algo = loaded.algo
    else:
        torch.manual_seed(0)
        algo = ProtoNet(create_model(kind, num_classes=len(stream.words),
                                     input_shape=(fe.num_features, fe.num_frames)))
    adapted = Adapted(algo.adapt(x, y, classes=stream.words), fe)
    negatives = [builtin_negatives(fe), featurize([Path(p) for p in negative_paths], fe)]
    adapted.open_set = calibrate_open_set(adapted, negatives, far=0.01, rule="background")
    return adapted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=os.environ.get("METAVOX_TEST_DATA", "../shared/data"))
    ap.add_argument("--run", default=None, help="a meta-trained run on the fusion base "
                    "(default: frozen nearest centroid)")
    ap.add_argument("--cascade-far", type=float, default=None, help="stage 1's rate of "
                    "negatives passed (default: the cascade's default)")
    args = ap.parse_args()
    from metavox.data import Corpus
    from metavox.kws.protocol import StreamConfig, build_stream

    root = Path(args.data) / "speech_commands_v2_test"
    if not root.is_dir():
        raise SystemExit(f"no Speech Commands under {args.data} (set --data)")
    corpus = Corpus.from_preset("speech-commands", root)
    words = ["eight", "five", "happy", "nine", "one", "six", "three", "two", "zero"]
    stream = build_stream(corpus, words, StreamConfig(episodes=1, shots=(5,)), 0, 16000)
    wave = stream.wave[: int(args.seconds * 16000)]
    rng = np.random.default_rng(0)
    others = sorted(u.path for u in corpus if u.label in ("bed", "bird", "cat", "house", "tree"))
    negative_paths = [others[i] for i in np.sort(rng.permutation(len(others))[:300])]
    speech = enrolled("speech-embedding", stream, negative_paths, None)
    fusion = enrolled("fusion", stream, negative_paths, args.run)
    torch.set_num_threads(args.threads)
    settings, segments = SpotSettings(), SpotSettings(decision="segments")
    makers = {
        "speech embedding": lambda: Spotter(speech, settings=settings),
        "fusion, every hop": lambda: Spotter(fusion, settings=settings, cascade=False),
        "fusion, cascade": lambda: Spotter(fusion, settings=settings, cascade=True,
                                           cascade_far=args.cascade_far),
        "cascade, stride 1": lambda: Spotter(fusion, settings=settings, cascade=True,
                                             cascade_far=args.cascade_far, cascade_stride=1),
        "fusion, segments": lambda: Spotter(fusion, settings=segments),
        "speech embedding, segments": lambda: Spotter(speech, settings=segments),
    }
    timings: dict[str, list[float]] = {k: [] for k in makers}
    found, verified = {}, {}
    for _ in range(args.repeats):  # alternating, so that load drifts touch all alike
        for name, make in makers.items():
            spotter = make()
            rtf, found[name] = timed(spotter, wave, 16000)
            timings[name].append(rtf)
            verified[name] = spotter.verified_fraction
    spotter = makers["fusion, cascade"]()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {len(wave) / 16000:.0f} s of "
          f"a protocol stream (words {', '.join(stream.words)}), hop 80 ms, "
          f"{args.repeats} repeats; fusion model: {args.run or 'nearest centroid'}; "
          f"cascade stage 1 passes {spotter.scorer.stage1.far:g} of the negatives, "
          f"stride {spotter.scorer.stride} hops")
    print(f"{'what runs':<28}{'real-time factor':>18}{'hops verified':>16}{'detections':>12}")
    for name in makers:
        share = "per segment" if name.endswith("segments") else f"{100 * verified[name]:.1f}%"
        print(f"{name:<28}{statistics.median(timings[name]):>18.4f}"
              f"{share:>16}{len(found[name]):>12}")
    every = set(found["fusion, every hop"])
    for name in ("fusion, cascade", "cascade, stride 1"):
        got = set(found[name])
        print(f"{name}: {len(got & every)} of the every-hop detections at the same hop, "
              f"{len(every - got)} missed or moved, {len(got - every)} at other hops")


if __name__ == "__main__":
    main()
