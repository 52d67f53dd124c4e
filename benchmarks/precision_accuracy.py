"""Does bfloat16 change the result? Accuracy on an evaluation protocol, float32 against bf16.

Meta-trains the same run twice, once per ``precision`` (same seed, same episodes), and
evaluates each checkpoint under both precisions on the same meta-test episodes: a 2 x 2
table per number of shots (trained in / adapted in), mean accuracy ± 95% interval, with the
meta-training time of each. The default is one fold of protocol 2 (FSDD, held-out speaker
george, 10-way 1- and 5-shot), small enough to carry to a GPU machine (27 MB of audio):

    python benchmarks/precision_accuracy.py --device cuda
    python benchmarks/precision_accuracy.py --quick          # smoke run on CPU, ~1 min

On a CPU without bfloat16 hardware (AVX2 only) the bf16 runs are several times slower than
float32; the table is still valid, the times are not a reason to use bf16 there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from metavox.pipeline.config import load_config
from metavox.pipeline.evaluate import evaluate
from metavox.pipeline.train import train

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("float32", "bfloat16")
QUICK = ["optim.iterations=6", "optim.warmup=1", "validation.checkpoint_every=3",
         "validation.every=3", "episodes.meta_batch=2", 'model.options={ channels = 8 }']


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "fsdd_speakers.toml"))
    ap.add_argument("--data", default=None, help="corpus root (default: the config's)")
    ap.add_argument("--fold", default="george", help="held-out speaker (speaker protocols)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--episodes", type=int, default=100, help="test episodes per cell")
    ap.add_argument("--out", default="runs/precision")
    ap.add_argument("--set", action="append", default=[], help="config override")
    ap.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.episodes = min(args.episodes, 4)
    extra = (QUICK if args.quick else []) + list(args.set)
    if args.data:
        extra.append(f'data.root="{args.data}"')
    print(f"torch {torch.__version__}; device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    rows: list[dict] = []
    times: dict[str, float] = {}
    for trained_in in PRECISIONS:
        run = Path(args.out) / trained_in
        cfg = load_config(args.config, [f'data.test_speakers=["{args.fold}"]', f'out="{run}"',
                                        f'precision="{trained_in}"', f'device="{args.device}"',
                                        *extra])
        start = time.perf_counter()
        train(cfg, progress=False)
        times[trained_in] = time.perf_counter() - start
        for adapted_in in PRECISIONS:
            rep = evaluate(run, baselines=[], max_steps=0, episodes=args.episodes,
                           device=args.device, precision=adapted_in)
            for s in rep.scores:
                rows.append({"trained": trained_in, "adapted": adapted_in, "shots": s.shots,
                             "accuracy": s.accuracy, "ci95": s.ci95, "episodes": s.episodes})
    ways = cfg.episodes.ways
    print("\nmeta-training time: " + ", ".join(f"{p} {t:.1f} s" for p, t in times.items()))
    print(f"\n{cfg.algorithm.name}, {ways}-way, {args.episodes} episodes per cell, seed "
          f"{cfg.seed}, fold {args.fold}\n")
    print("| trained in | adapted in | " + " | ".join(
        f"{k}-shot" for k in sorted({r['shots'] for r in rows})) + " |")
    print("|---|---|" + "---|" * len({r["shots"] for r in rows}))
    for t in PRECISIONS:
        for a in PRECISIONS:
            cells = sorted((r for r in rows if r["trained"] == t and r["adapted"] == a),
                           key=lambda r: r["shots"])
            print(f"| {t} | {a} | " + " | ".join(
                f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}" for r in cells) + " |")
    return rows


if __name__ == "__main__":
    main()
