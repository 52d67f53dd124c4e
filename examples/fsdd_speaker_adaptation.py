"""Protocol 2: speaker adaptation on FSDD, leave one speaker out, mean over the folds.

For each of the six speakers: meta-train MAML, first-order MAML and Reptile on the other
five (one speaker per task, 10-way over the digits), then evaluate on the held-out
speaker — support and queries from that speaker only — next to the baselines (no
adaptation, pre-train + fine-tune, ProtoNet) on the same episodes. The table pools the
folds' episodes: mean accuracy ± 95% interval over all of them.

    python examples/fsdd_speaker_adaptation.py                 # all six folds
    python examples/fsdd_speaker_adaptation.py --folds jackson --quick
    python examples/fsdd_speaker_adaptation.py --folds theo --methods fomaml,reptile
    python examples/fsdd_speaker_adaptation.py --methods maml \
        --config configs/fsdd_speakers_embedding.toml --out runs/fsdd-loso-embedding

Trained runs and each run's scores (``fold_scores.json``) are kept under ``--out``, so an
interrupted run picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from metavox.pipeline.config import load_config
from metavox.pipeline.evaluate import evaluate
from metavox.pipeline.train import train

SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
METHODS = ["maml", "fomaml", "reptile"]
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fsdd_speakers.toml"
QUICK = ["optim.iterations=4", "optim.warmup=1", "evaluation.episodes=4",
         "evaluation.pretrain_iterations=4", "evaluation.finetune_steps=3",
         "evaluation.finetune_all_steps=2", "evaluation.max_steps=2", "algorithm.eval_steps=2",
         "validation.checkpoint_every=2", "episodes.meta_batch=2"]


def pooled(cells: list[dict]) -> tuple[float, float, int]:
    """Mean and 95% half-width over the union of the folds' episodes, from each fold's
    mean, half-width and episode count."""
    n = sum(c["episodes"] for c in cells)
    mean = sum(c["accuracy"] * c["episodes"] for c in cells) / n
    ss = 0.0
    for c in cells:
        sd = c["ci95"] * math.sqrt(c["episodes"]) / 1.96 if c["episodes"] > 1 else 0.0
        ss += (c["episodes"] - 1) * sd**2 + c["episodes"] * (c["accuracy"] - mean) ** 2
    return mean, 1.96 * math.sqrt(ss / max(n - 1, 1)) / math.sqrt(n), n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", default=",".join(SPEAKERS), help="held-out speakers")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="meta-learners to run (the baselines come with maml's evaluation); "
                         "two processes can split a fold's methods between them")
    ap.add_argument("--out", default="runs/fsdd-loso")
    ap.add_argument("--config", default=str(CONFIG),
                    help="run config of every fold (default: configs/fsdd_speakers.toml)")
    ap.add_argument("--data", default=None, help="FSDD root (default: the config's)")
    ap.add_argument("--quick", action="store_true", help="a tiny budget (smoke test)")
    ap.add_argument("--set", action="append", default=[], help="config override")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {','.join(METHODS)}")
    # no accuracy-against-steps curve: with 150 queries per 10-way episode, recording the
    # query accuracy after every inner step would cost more than the adaptation itself
    extra = ["evaluation.max_steps=0"] + (QUICK if args.quick else []) + list(args.set)
    if args.data:
        extra.append(f'data.root="{args.data}"')
    cells: dict[tuple[str, int], list[dict]] = {}
    for speaker in args.folds.split(","):
        for method in args.methods.split(","):
            run = Path(args.out) / speaker / method
            cfg = load_config(args.config, [f'data.test_speakers=["{speaker}"]', f'out="{run}"',
                                       f'algorithm.name="{method}"', *extra])
            if method == "reptile":
                cfg.algorithm.steps = 5
            if not (run / "best.safetensors").is_file():
                train(cfg, progress=not args.quick)
            done = run / "fold_scores.json"  # evaluations are cached too, so it resumes
            if not done.is_file():
                baselines = None if method == "maml" else []
                rep = evaluate(run, baselines=baselines, progress=not args.quick)
                scores = [{"method": s.method, "shots": s.shots, "accuracy": s.accuracy,
                           "ci95": s.ci95, "episodes": s.episodes} for s in rep.scores]
                done.write_text(json.dumps(scores, indent=1) + "\n")
            for s in json.loads(done.read_text()):
                cells.setdefault((s["method"], s["shots"]), []).append(
                    {"fold": speaker, "accuracy": s["accuracy"], "ci95": s["ci95"],
                     "episodes": s["episodes"]})
    rows = []
    for (method, shots), fold_cells in cells.items():
        mean, ci, n = pooled(fold_cells)
        rows.append({"method": method, "shots": shots, "accuracy": mean, "ci95": ci,
                     "episodes": n, "folds": fold_cells})
    shots = sorted({r["shots"] for r in rows})
    print("| method | " + " | ".join(f"10-way {k}-shot" for k in shots) + " |")
    print("|---|" + "---|" * len(shots))
    for method in dict.fromkeys(r["method"] for r in rows):
        vals = [next((f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}" for r in rows
                      if r["method"] == method and r["shots"] == k), "–") for k in shots]
        print(f"| {method} | " + " | ".join(vals) + " |")
    out = Path(args.out) / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    return {"rows": rows, "results": str(out)}


if __name__ == "__main__":
    main()
