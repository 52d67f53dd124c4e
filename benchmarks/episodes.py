"""Cached episode throughput on the Speech Commands test set.

Builds (or reuses) the feature cache of the shared Speech Commands v2 test set, then times
5-way 5-shot 15-query episodes in meta-batches of 8 through a DataLoader with 0 and 2
workers, and prints the median episodes per second over the repeats.

    python benchmarks/episodes.py [--repeats 5] [--batches 40] [--cache-dir DIR]

The last column times a DataLoader yielding zero tensors of the same size: the transfer
cost alone, an upper bound for the worker rows. Then, so that the rate means something,
it times the consumer on the same batches: meta-training steps (forward, backward, Adam)
of second-order and first-order MAML on the issue's full speech workload (Conv-4 with 64
channels, 5 inner steps at lr 0.4) and prints how many times faster sampling is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from metavox.audio.features import FrontendConfig
from metavox.data import ClassEpisodeSampler, Corpus, EpisodeDataset, FeatureCache
from metavox.meta import MAML
from metavox.models import Conv4

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech_commands_v2_test"


class Blank(Dataset):
    """Batches of zeros as large as the episodes: the cost of DataLoader transfer alone."""

    def __init__(self, numel: int, length: int) -> None:
        self.numel, self.length = numel, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(self.numel)


def time_loader(dataset: Dataset, workers: int) -> float:
    """Seconds for all batches after the first (which pays for the worker start-up)."""
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in it:
        pass
    return time.perf_counter() - start


def consumption(dataset: EpisodeDataset, first_order: bool, steps: int, ways: int) -> float:
    """Median tasks per second that meta-training consumes (after one warm-up step)."""
    batch = dataset[0]
    torch.manual_seed(0)
    model = Conv4(ways, tuple(batch.support_x.shape[-2:]), channels=64)
    algo = MAML(model, inner_lr=0.4, steps=5, first_order=first_order).train()
    opt = torch.optim.Adam(algo.parameters(), lr=1e-3)
    rates = []
    for i in range(steps + 1):
        batch = dataset[i]
        start = time.perf_counter()
        opt.zero_grad()
        algo(batch).loss.backward()
        opt.step()
        if i:
            rates.append(batch.support_x.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="Speech Commands root")
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: $METAVOX_CACHE")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, default=40, help="timed batches per repeat")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--meta-batch", type=int, default=8)
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--train-steps", type=int, default=3,
                    help="timed meta-training steps per algorithm (0: skip the comparison)")
    args = ap.parse_args()

    corpus = Corpus.from_preset("speech-commands", args.data)
    cache = FeatureCache(args.cache_dir, FrontendConfig(), workers=min(2, os.cpu_count() or 1))
    start = time.perf_counter()
    existing = cache.load(corpus)
    store = existing if existing is not None else cache.get(corpus)
    took = time.perf_counter() - start
    print(f"corpus: {len(corpus)} clips, {len(corpus.labels)} labels; store {store.shape} "
          f"{store.features.dtype} at {store.path}")
    print(f"cache {'reused (no decoding)' if existing is not None else 'built'} in {took:.2f} s")

    sampler = ClassEpisodeSampler(store, args.ways, args.shots, args.queries,
                                  too_few="drop", seed=0)
    print(f"{args.ways}-way {args.shots}-shot {args.queries}-query over "
          f"{len(sampler.classes)} classes with >= {args.shots + args.queries} clips; "
          f"meta-batch {args.meta_batch}; {args.batches} timed batches x {args.repeats} repeats")
    dataset = EpisodeDataset(sampler, args.meta_batch, args.batches + 1)
    episodes = args.batches * args.meta_batch
    first = dataset[0]
    numel = first.support_x.numel() + first.query_x.numel()
    blank = Blank(numel, args.batches + 1)
    rows = []
    for workers in args.workers:
        rates = [episodes / time_loader(dataset, workers) for _ in range(args.repeats)]
        ceiling = [episodes / time_loader(blank, workers) for _ in range(args.repeats)]
        rows.append((workers, statistics.median(rates), min(rates), max(rates),
                     statistics.median(ceiling)))

    print(f"batch: {numel * 4 / 1e6:.1f} MB of float32 features")
    print()
    print(f"{'workers':>7} | {'episodes/s (median)':>19} | {'min':>6} | {'max':>6} | "
          f"{'zeros-only ceiling':>18}")
    print(f"{'-' * 7}-+-{'-' * 19}-+-{'-' * 6}-+-{'-' * 6}-+-{'-' * 18}")
    for workers, med, lo, hi, ceil in rows:
        print(f"{workers:>7} | {med:>19.0f} | {lo:>6.0f} | {hi:>6.0f} | {ceil:>18.0f}")
    if args.train_steps:
        fastest = max(r[1] for r in rows)
        print(f"\nconsumer: meta-training on these batches (Conv-4 64 ch, 5 inner steps), "
              f"median of {args.train_steps} steps")
        for name, fo in (("second-order MAML", False), ("first-order MAML", True)):
            rate = consumption(dataset, fo, args.train_steps, args.ways)
            print(f"{name}: {rate:.2f} tasks/s; sampling (best loader, {fastest:.0f} "
                  f"episodes/s) is {fastest / rate:,.0f}x faster")
    print(f"\n({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end)")


if __name__ == "__main__":
    main()
