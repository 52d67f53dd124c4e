"""Enrollment latency: adapt to one new 5-way 5-shot task and classify its 75 queries.

This is the delay a user feels after recording a few examples of new words. Every variant
starts from the same Conv-4 (64 channels, 1x40x101 log-mel inputs), adapts with 5 SGD
steps at step size 0.4 and returns the predicted class of each query. The variants run in
one process, alternating, and each figure is the median over the repeats:

- ``learn2learn``: ``MAML(model, lr)``, ``clone()``, ``adapt()`` x 5, then the queries,
  as its documentation writes it (second-order graph kept, the default);
- ``learn2learn first-order``: the same with ``first_order=True``;
- ``metavox full``: ``MAML.adapt(support_x, support_y)`` then ``Learner.predict``;
- ``metavox head (ANIL)``: ``ANIL.adapt``: the body embeds the support once, the head
  adapts, then the queries go through body and head;
- ``metavox head, cached features``: ``ANIL.adapt_head`` on support features computed
  beforehand (clips embedded when they were recorded) and the head on cached query
  features: the re-fit cost alone.

    python benchmarks/enroll_latency.py [--repeats 21] [--threads 2]

Install learn2learn first (``bash benchmarks/install_anchors.sh``); without it its rows are
left out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from metavox.meta import ANIL, MAML
from metavox.meta.inner import default_loss
from metavox.models import Conv4

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _anchors import load_learn2learn  # noqa: E402

WAYS, SHOTS, QUERIES, STEPS, LR = 5, 5, 15, 5, 0.4
SHAPE = (40, 101)


def make_task(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Support inputs and labels, query inputs (seeded log-mel-shaped noise)."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(WAYS * SHOTS, 1, *SHAPE, generator=g)
    sy = torch.arange(WAYS).repeat_interleave(SHOTS)
    qx = torch.randn(WAYS * QUERIES, 1, *SHAPE, generator=g)
    return sx, sy, qx


def variants(model: nn.Module, task) -> dict[str, Callable[[], Tensor]]:
    """Name -> a call that enrolls on ``task`` and returns the query predictions."""
    sx, sy, qx = task
    out: dict[str, Callable[[], Tensor]] = {}
    try:
        l2l = load_learn2learn()
    except Exception as exc:  # noqa: BLE001 - report any failure to load
        print(f"learn2learn rows left out: {type(exc).__name__}: {exc}")
        l2l = None
    if l2l is not None:
        for name, first_order in (("learn2learn", False), ("learn2learn first-order", True)):
            maml = l2l.algorithms.MAML(model, lr=LR, first_order=first_order)

            def run(maml=maml) -> Tensor:
                learner = maml.clone()
                for _ in range(STEPS):
                    learner.adapt(default_loss(learner(sx), sy))
                with torch.no_grad():
                    return learner(qx).argmax(-1)

            out[name] = run
    full = MAML(model, inner_lr=LR, steps=STEPS)
    out["metavox full"] = lambda: full.adapt(sx, sy).predict(qx)
    anil = ANIL(model, inner_lr=LR, steps=STEPS)
    out["metavox head (ANIL)"] = lambda: anil.adapt(sx, sy).predict(qx)
    with torch.no_grad():
        fs, fq = model.body(sx), model.body(qx)

    def cached() -> Tensor:
        head = anil.adapt_head(fs, sy)
        with torch.no_grad():
            return head(fq).argmax(-1)

    out["metavox head, cached features"] = cached
    return out


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Best float32 FLOP/s of an ``n x n`` matmul: the machine's practical ceiling."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def count_flops(call: Callable[[], Tensor]) -> float:
    """Matmul and convolution FLOPs of one call (forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        call()
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=21, help="timed calls per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per variant first")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = Conv4(WAYS, SHAPE, channels=args.channels).train()
    calls = variants(model, make_task(args.seed))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} "
          f"CPUs; Conv-4 ({args.channels} ch) on 1x{SHAPE[0]}x{SHAPE[1]}, {WAYS}-way {SHOTS}-shot"
          f", {WAYS * QUERIES} queries, {STEPS} steps at lr {LR}")
    for call in calls.values():
        for _ in range(args.warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    ref = statistics.median(times["learn2learn"]) if "learn2learn" in times else None
    peak = matmul_peak()
    flops = {name: count_flops(call) for name, call in calls.items()}
    print(f"\n{args.repeats} timed calls per variant, alternating, after {args.warmup} "
          "warm-up calls\n")
    print(f"measured peak: {peak / 1e9:.1f} GFLOP/s (float32 2048x2048 matmul, best of 5)\n")
    print("| variant | median ms | min-max ms | x faster than learn2learn | GFLOP | GFLOP/s "
          "| ms at the matmul peak |")
    print("|---|---|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        speed = f"{ref / med:.2f}" if ref else "-"
        print(f"| {name} | {1e3 * med:.1f} | {1e3 * min(ts):.1f}-{1e3 * max(ts):.1f} | "
              f"{speed} | {flops[name] / 1e9:.2f} | {flops[name] / med / 1e9:.1f} | "
              f"{1e3 * flops[name] / peak:.1f} |")
    print(f"\n(load average {os.getloadavg()[0]:.2f} at the end)")


if __name__ == "__main__":
    main()
