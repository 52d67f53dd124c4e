"""The exported ONNX model against the PyTorch spotter on the stream protocol's test streams.

For each stream (``--episodes``, built as by ``metavox streams`` from the run's test words),
the run's meta-learner enrolls the stream's 5 words from ``--shots`` clips each, its open
set is calibrated as ``metavox adapt`` does (``--far``), and the adapted model is exported
to ONNX (float32, and int8 with onnxruntime's dynamic quantisation). Then

- ``metavox.kws.Spotter`` (PyTorch, incremental front-end),
- ``examples/spot_onnx.py``'s ``spot`` on the float32 file (the clip model on every
  window), and
- the same on the int8 file

spot the words in the stream. It prints how many events the ONNX runs share with PyTorch
(same word, same time), and each one's hits and false accepts against the stream's known
placements (the protocol's matching).

    python benchmarks/onnx_streams.py runs/sc-embedding-top1 [--episodes 3] [--shots 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metavox.kws.export import export_onnx
from metavox.kws.protocol import StreamConfig, build_stream, match_events
from metavox.kws.spotter import Spotter
from metavox.pipeline.build import build_run_data
from metavox.pipeline.enroll import (
    Adapted,
    calibrate_open_set,
    featurize,
    negative_pool,
)
from metavox.pipeline.train import load_trained

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "spot_onnx.py"


def load_example():
    spec = importlib.util.spec_from_file_location("spot_onnx", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--far", type=float, default=0.01)
    args = ap.parse_args()
    spot_onnx = load_example()
    loaded = load_trained(args.run)
    data = build_run_data(loaded.config)
    words = sorted(set(data.parts["test"].labels))
    cfg = StreamConfig(episodes=args.episodes, shots=(args.shots,), seed=loaded.config.seed)
    negatives = negative_pool(loaded)
    totals = {k: [0, 0, 0] for k in ("pytorch", "onnx", "onnx-int8")}  # hits, FA, same
    targets, same_events, all_events = 0, 0, 0
    seconds, sizes = {"onnx": [], "onnx-int8": []}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for e in range(args.episodes):
            stream = build_stream(data.corpus, words, cfg, e, loaded.frontend.sample_rate)
            paths = [Path(p) for w in stream.words for p in stream.enroll[w][: args.shots]]
            x = featurize(paths, loaded.frontend)
            y = torch.arange(len(stream.words)).repeat_interleave(args.shots)
            adapted = Adapted(loaded.algo.adapt(x, y, classes=stream.words), loaded.frontend)
            adapted.open_set = calibrate_open_set(adapted, negatives, far=args.far,
                                                  rule="background")
            f32 = export_onnx(adapted, Path(tmp) / f"e{e}.onnx")
            i8 = export_onnx(adapted, Path(tmp) / f"e{e}.int8.onnx", quantize=True)
            spotter = Spotter(adapted)
            chunks = [stream.wave[i:i + 16000] for i in range(0, len(stream.wave), 16000)]
            chunks.append(np.zeros(8000, dtype=np.float32))
            runs = {"pytorch": [(d.word, round(d.time, 3)) for d in spotter.run(chunks)]}
            for key, file in (("onnx", f32), ("onnx-int8", i8)):
                start = time.perf_counter()
                runs[key] = [(d["word"], d["time"]) for d in spot_onnx.spot(str(file),
                                                                           stream.wave)]
                seconds[key].append(time.perf_counter() - start)
                sizes[key] = file.stat().st_size
            targets += sum(p.target for p in stream.placements)
            for k, ev in runs.items():
                h, f, _ = match_events(stream, ev, 0.75)
                totals[k][0] += h
                totals[k][1] += f
                totals[k][2] += len(set(ev) & set(runs["pytorch"]))
            same_events += len(set(runs["onnx"]) & set(runs["pytorch"]))
            all_events += len(set(runs["onnx"]) | set(runs["pytorch"]))
            print(f"stream {e}: {stream.seconds / 60:.1f} min, words {stream.words}, "
                  f"events pytorch {len(runs['pytorch'])}, onnx {len(runs['onnx'])}, "
                  f"int8 {len(runs['onnx-int8'])}")
    print(f"\n{args.episodes} streams, {targets} target words, {args.shots}-shot, far {args.far}")
    print(f"{'runtime':<12}{'hits':>6}{'false accepts':>15}{'events shared with pytorch':>28}")
    for k, (h, f, s) in totals.items():
        print(f"{k:<12}{h:>6}{f:>15}{s:>28}")
    print(f"float32 ONNX and PyTorch: {same_events} of {all_events} distinct events identical")
    for key in seconds:
        print(f"{key}: file {sizes[key] / 1e6:.2f} MB, example's spot() on a stream "
              f"{np.median(seconds[key]):.1f} s (median)")
    print(f"int8 / float32: size {sizes['onnx-int8'] / sizes['onnx']:.2f}, time "
          f"{np.median(seconds['onnx-int8']) / np.median(seconds['onnx']):.2f}")


if __name__ == "__main__":
    main()
