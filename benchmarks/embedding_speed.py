"""One meta-training iteration on the cached speech embedding against Conv-4.

The pretrained base's promise is speed as well as accuracy: the frozen embedding's windows
are computed once per clip and cached, so a meta-training iteration runs only the small
trainable part on top. This times one iteration of the optimiser loop (4 tasks, 5-way
1-shot, 5 queries per class, second-order MAML with 5 inner steps, Adam step) for

- ``conv4``: Conv-4 with 32 channels on 1 x 40 x 51 log-mel (protocol 1's from-scratch
  model, ``configs/speech_commands_keywords.toml`` with 5 steps);
- ``embedding``: the ``speech-embedding`` backbone with its adapter on cached
  ``96 x 16`` embedding windows, Proto-MAML head (``head_init="prototypes"``).

Both run in one process, alternating, on random inputs of the right shapes (the cost does
not depend on the values); each figure is the median over the repeats, and the ratio is
taken repeat by repeat.

    python benchmarks/embedding_speed.py [--repeats 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from metavox.meta import create_algorithm
from metavox.models import create_model


def episode(shape: tuple[int, int], tasks: int = 4, ways: int = 5, shots: int = 1,
            queries: int = 5) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    sy = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    sx = torch.randn(tasks, ways * shots, 1, *shape, generator=g)
    qx = torch.randn(tasks, ways * queries, 1, *shape, generator=g)
    return sx, sy, qx, qy


def make(name: str):
    torch.manual_seed(0)
    if name == "conv4":
        model = create_model("conv4", num_classes=5, input_shape=(40, 51), channels=32)
        algo = create_algorithm("maml", model, inner_lr=0.05, steps=5)
        return algo, episode((40, 51))
    model = create_model("speech-embedding", num_classes=5, input_shape=(96, 16),
                         adapter=True, scale=1.0)
    algo = create_algorithm("maml", model, inner_lr=0.5, steps=5, head_init="prototypes")
    return algo, episode((96, 16))


def iteration_seconds(algo, batch, opt) -> float:
    t0 = time.perf_counter()
    out = algo(batch)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = {name: make(name) for name in ("conv4", "embedding")}
    opts = {name: torch.optim.Adam(algo.parameters(), lr=1e-3) for name, (algo, _) in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.repeats + 2):  # two warm-up rounds
        for name, (algo, batch) in runs.items():
            t = iteration_seconds(algo.train(), batch, opts[name])
            if r >= 2:
                times[name].append(t)
    ratios = [c / e for c, e in zip(times["conv4"], times["embedding"], strict=True)]
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} repeats; "
          "one iteration = 4 tasks, 5-way 1-shot, 5 queries, second-order MAML, 5 steps")
    print(f"{'model':<12}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
    for name, ts in times.items():
        print(f"{name:<12}{1000 * statistics.median(ts):>12.1f}{1000 * min(ts):>10.1f}"
              f"{1000 * max(ts):>10.1f}")
    print(f"speed-up of the cached embedding over Conv-4: median {statistics.median(ratios):.0f}x "
          f"(min {min(ratios):.0f}x, max {max(ratios):.0f}x)")


if __name__ == "__main__":
    main()
