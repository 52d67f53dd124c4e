"""Streaming keyword spotting: real-time factor on one core, and latency from the end of a
word to its detection.

A spotter on the speech embedding (the frozen embedding with the nearest-centroid rule,
or an adapted model given with ``--model``) listens to a stream built by the stream
protocol from Speech Commands (``--data``, default ``../shared/data``; without it a
synthetic stream of noise bursts is used for the speed figures only). It times

- ``incremental``: :class:`metavox.kws.Spotter`, whose feature stream computes each mel
  frame and each 775 ms embedding window once;
- ``spotter``: the same plus the model and the decision rule (what ``metavox listen``
  runs);
- ``recompute``: the plain way, the whole 2 s clip through the front-end every hop (what
  running the exported clip model on every window costs, e.g. ``examples/spot_onnx.py``),

alternating, in one process, with ``torch.set_num_threads(threads)`` (1 by default: "one
core"). Real-time factor = processing seconds / audio seconds (median over repeats).
Latency: for every detected target word, detection time minus the end of the word's speech
(found by energy), with the background rule at the strictest threshold calibrated on
generated backgrounds (above all of them), smoothing over 3 hops and the refractory period
of the window's length (``metavox listen``'s defaults); the median and 90th percentile are
printed.

    python benchmarks/stream_speed.py [--seconds 60] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from metavox.audio.augment import background_noise
from metavox.audio.features import FrontendConfig, build_frontend
from metavox.audio.streaming import ClipFeatureStream, EmbeddingFeatureStream
from metavox.kws.spotter import SpotSettings, Spotter

HOP = EmbeddingFeatureStream.STEP


def rtf(stream, wave: np.ndarray, rate: int, chunk: int = 1600) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(wave), chunk):
        stream.push(wave[i:i + chunk])
    return (time.perf_counter() - t0) / (len(wave) / rate)


class _Feed:
    """A spotter with the ``push`` interface of a feature stream (for :func:`rtf`)."""

    def __init__(self, spotter: Spotter) -> None:
        self.push = spotter.feed


def spotter_for_speed(cfg: FrontendConfig) -> Spotter:
    """The frozen embedding with the nearest-centroid rule on random support features: the
    cost of scoring does not depend on what was enrolled."""
    from metavox.meta import ProtoNet
    from metavox.models import create_model
    from metavox.pipeline.enroll import Adapted

    torch.manual_seed(0)
    base = create_model("speech-embedding", num_classes=5, input_shape=(96, 16))
    learner = ProtoNet(base).adapt(torch.randn(25, 1, 96, 16),
                                   torch.arange(5).repeat_interleave(5),
                                   classes=[f"w{i}" for i in range(5)])
    return Spotter(Adapted(learner, cfg), settings=SpotSettings())


def speed(wave: np.ndarray, cfg: FrontendConfig, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"spotter": [], "incremental": [], "recompute": []}
    for _ in range(repeats):
        times["spotter"].append(rtf(_Feed(spotter_for_speed(cfg)), wave, 16000))
        times["incremental"].append(rtf(EmbeddingFeatureStream(cfg, HOP), wave, 16000))
        times["recompute"].append(rtf(ClipFeatureStream(cfg, HOP), wave, 16000))
    return times


def latency(data: Path, seconds: float, model: str | None) -> list[float]:
    """Detection minus word end (s) for the hits of a spotter on protocol streams."""
    from metavox.data import Corpus
    from metavox.kws.protocol import StreamConfig, build_stream, match
    from metavox.kws.spotter import smoothed_scores, triggered
    from metavox.meta import ProtoNet
    from metavox.meta.openset import OpenSet, threshold_for
    from metavox.models import create_model
    from metavox.pipeline.enroll import (
        Adapted,
        builtin_negatives,
        featurize,
        load_adapted,
        negative_scores,
    )

    corpus = Corpus.from_preset("speech-commands", data / "speech_commands_v2_test")
    words = ["eight", "five", "happy", "nine", "one", "six", "three", "two", "zero"]
    cfg = StreamConfig(episodes=1, shots=(5,), targets=10, nontargets=3)
    lat: list[float] = []
    e = 0
    while sum(1 for _ in lat) < 20 and e < 8:
        stream = build_stream(corpus, words, cfg, e, 16000)
        fe = FrontendConfig(kind="speech-embedding", duration=2.0)
        if model is None:
            torch.manual_seed(0)
            base = create_model("speech-embedding", num_classes=5, input_shape=(96, 16))
            x = featurize([Path(p) for w in stream.words for p in stream.enroll[w]], fe)
            y = torch.arange(5).repeat_interleave(5)
            adapted = Adapted(ProtoNet(base).adapt(x, y, classes=stream.words), fe)
        else:
            adapted = load_adapted(model)
        negatives = [builtin_negatives(adapted.frontend)]
        scores_neg, bank = negative_scores(adapted, negatives, rule="background")
        adapted.open_set = OpenSet("background", threshold_for(scores_neg, 0.0), 0.0,
                                   len(scores_neg), background=bank)
        settings = SpotSettings().resolve(adapted.frontend)
        spotter = Spotter(adapted, settings=settings)
        steps = []
        for i in range(0, len(stream.wave), 16000):
            steps += spotter.scores(stream.wave[i:i + 16000])
        times = np.array([t for t, _ in steps])
        best, scores = smoothed_scores(torch.stack([x for _, x in steps]), settings.smooth)
        fired = triggered(times, best, scores, adapted.open_set.threshold,
                          settings.refractory_seconds)
        lats = [o.latency for o in match(stream, stream.words, times, best, fired, 0.75)
                if o.hit]
        lat += lats
        e += 1
        if model is not None:
            break
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=os.environ.get("METAVOX_TEST_DATA", "../shared/data"))
    ap.add_argument("--model", default=None, help="an adapted model (default: the frozen "
                    "embedding with nearest centroid, enrolled per stream)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = FrontendConfig(kind="speech-embedding", duration=2.0)
    build_frontend(cfg)  # weights converted and cached before timing
    rng = np.random.default_rng(0)
    n = int(args.seconds * 16000)
    wave = background_noise("pink", n, 16000, rng, level=0.01)
    for start in range(8000, n - 16000, 24000):  # a loud 0.5 s burst every 1.5 s
        wave[start:start + 8000] += background_noise("white", 8000, 16000, rng, level=0.2)
    times = speed(wave, cfg, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.seconds:.0f} s of audio, "
          f"hop 80 ms, {args.repeats} repeats")
    print(f"{'what runs':<22}{'real-time factor':>18}   (spotter: incremental front-end "
          "+ model + decisions)")
    for k, v in med.items():
        print(f"{k:<22}{v:>18.4f}")
    print(f"incremental is {med['recompute'] / med['incremental']:.1f}x faster than "
          "recomputing the clip every hop")
    data = Path(args.data)
    if not (data / "speech_commands_v2_test").is_dir():
        print(f"latency: skipped (no Speech Commands under {data}; set --data)")
        return
    lat = latency(data, args.seconds, args.model)
    if lat:
        ms = 1000 * np.asarray(lat)
        print(f"latency, end of word -> detection, {len(ms)} hits: median {np.median(ms):.0f} "
              f"ms, 90th percentile {np.percentile(ms, 90):.0f} ms")


if __name__ == "__main__":
    main()
