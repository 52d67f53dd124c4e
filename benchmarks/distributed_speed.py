"""Meta-training throughput with 1 and more processes under torchrun (gloo on loopback).

Each run launches ``torchrun --nproc-per-node P`` on this script in worker mode: every rank
builds the same Conv-4, takes its slice of a global meta-batch of seeded random
log-mel-shaped episodes, computes the second-order MAML meta-gradient, averages it with
metavox's bucketed all-reduce and steps Adam, exactly as ``metavox train`` does. Rank 0
reports the median tasks per second over the timed steps, and separately how long the
gradient all-reduce alone takes (the communication cost per step). Process counts
alternate over the repeats; torch threads per rank = cores / P (torchrun's default is 1).

    python benchmarks/distributed_speed.py [--procs 1 2] [--repeats 3] [--workload speech-small]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from maml_speed import WORKLOADS, make_batch, make_model  # noqa: E402

from metavox.engine.distributed import all_reduce_gradients, from_environment, shutdown  # noqa: E402
from metavox.meta import MAML  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    d = from_environment("cpu")
    w = WORKLOADS[args.workload]
    share = args.meta_batch // d.world
    model = make_model(w, 0)
    algo = MAML(model, inner_lr=w.inner_lr, steps=w.steps, track_before=False).train()
    opt = torch.optim.Adam(algo.parameters(), lr=1e-3)
    batch = make_batch(w, 0, args.meta_batch, torch.float32, torch.device("cpu"))
    mine = tuple(t[d.rank * share:(d.rank + 1) * share] for t in batch)
    times, comm = [], []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        opt.zero_grad()
        algo(mine).loss.backward()
        c0 = time.perf_counter()
        all_reduce_gradients(algo.parameters(), d)
        c1 = time.perf_counter()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            comm.append(c1 - c0)
    if d.main:
        nbytes = sum(p.numel() * p.element_size() for p in algo.parameters())
        print(json.dumps({"rate": args.meta_batch / statistics.median(times),
                          "comm_ms": 1e3 * statistics.median(comm), "bytes": nbytes,
                          "threads": torch.get_num_threads()}))
    shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace, procs: int) -> dict:
    threads = max(1, (os.cpu_count() or 1) // procs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
           str(procs), "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           os.path.abspath(__file__), "--worker", "--workload", args.workload,
           "--meta-batch", str(args.meta_batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"torchrun with {procs} process(es) failed:\n{proc.stderr[-2000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="speech-small")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--meta-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per launch")
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    w = WORKLOADS[args.workload]
    print(f"{args.workload}: {w.describe()}; global meta-batch {args.meta_batch}; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    runs: dict[int, list[dict]] = {p: [] for p in args.procs}
    for rep in range(args.repeats):
        for p in args.procs[rep % len(args.procs):] + args.procs[:rep % len(args.procs)]:
            runs[p].append(launch(args, p))
    base = statistics.median(r["rate"] for r in runs[args.procs[0]])
    print(f"\n{args.repeats} launch(es) per row, alternating; {args.steps} timed steps each\n")
    print("| processes | threads each | tasks/s (median) | x 1st row | all-reduce ms/step | "
          "gradient MB |")
    print("|---|---|---|---|---|---|")
    for p, rs in runs.items():
        rate = statistics.median(r["rate"] for r in rs)
        print(f"| {p} | {rs[0]['threads']} | {rate:.2f} | {rate / base:.2f} | "
              f"{statistics.median(r['comm_ms'] for r in rs):.2f} | "
              f"{rs[0]['bytes'] / 2**20:.2f} |")
    print(f"\n(load average {os.getloadavg()[0]:.2f} at the end)")


if __name__ == "__main__":
    main()
