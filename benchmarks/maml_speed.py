"""Meta-training speed of metavox against learn2learn 0.2.0 and higher 0.2.1.

First a gradient check: for every algorithm, the float64 meta-gradient of each
implementation is compared with learn2learn's for the same parameters and episode, and a
variant whose relative error ``||g - g_l2l|| / ||g_l2l||`` is not below 1e-8 is not timed.
Then each variant is timed in a fresh subprocess (so peak RSS is its own), the variants
alternating within each repeat, on the same model, data and seed:

    python benchmarks/maml_speed.py --quick                       # smoke run, ~1 min
    python benchmarks/maml_speed.py --workload speech-full --repeats 5
    python benchmarks/maml_speed.py --workload sinusoid --algo maml2 fomaml --impl \\
        metavox-vmap learn2learn
    python benchmarks/maml_speed.py --check-only --impl metavox-loop metavox-vmap \\
        learn2learn higher                                        # correctness only

Install the anchors first with ``bash benchmarks/install_anchors.sh``. Columns are
explained in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from metavox.meta import ANIL, MAML, Reptile
from metavox.meta.inner import default_loss
from metavox.models import MLP, Conv4

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _anchors import ANCHORS, load_higher, load_learn2learn  # noqa: E402

Batch = tuple[Tensor, Tensor, Tensor, Tensor]
Step = Callable[[Batch], None]

ALGOS = ("maml2", "fomaml", "reptile", "anil")
ALGO_NAMES = {"maml2": "MAML (2nd order)", "fomaml": "first-order MAML", "reptile": "Reptile",
              "anil": "ANIL"}
IMPLS = ("metavox-loop", "metavox-vmap", "metavox-ckpt", "metavox-loop-bf16",
         "metavox-vmap-bf16", "learn2learn", "higher")
#: metavox-ckpt: the loop with ``inner_checkpoint=True`` (memory flat in the inner steps);
#: *-bf16: under bfloat16 autocast (float64 is never autocast, so the gradient check runs
#: the same code; the float32 deviation is reported separately)
REFERENCE = "learn2learn"
TOLERANCE = 1e-8


@dataclass(frozen=True)
class Workload:
    """A model and an episode shape."""

    kind: str  # "speech" (Conv-4 on log-mel) or "sinusoid" (1-40-40-1 MLP)
    meta_batch: int
    steps: int
    inner_lr: float
    shots: int
    queries: int
    ways: int = 1
    channels: int = 0
    input_shape: tuple[int, int] = (0, 0)

    def describe(self) -> str:
        if self.kind == "speech":
            h, w = self.input_shape
            return (f"Conv-4 ({self.channels} ch) on {h}x{w}, {self.ways}-way {self.shots}-shot "
                    f"{self.queries} queries, meta-batch {self.meta_batch}, {self.steps} inner "
                    f"steps at lr {self.inner_lr}")
        return (f"MLP 1-40-40-1, K={self.shots} support + {self.queries} query points, "
                f"meta-batch {self.meta_batch}, {self.steps} inner step(s) at lr {self.inner_lr}")


WORKLOADS = {
    "speech-full": Workload("speech", 8, 5, 0.4, 5, 15, ways=5, channels=64,
                            input_shape=(40, 101)),
    "speech-small": Workload("speech", 8, 5, 0.4, 5, 15, ways=5, channels=32,
                             input_shape=(40, 51)),
    "sinusoid": Workload("sinusoid", 25, 1, 0.01, 10, 10),
}


# -- model, data, steps ---------------------------------------------------------------


def make_model(w: Workload, seed: int) -> nn.Module:
    """The workload's network, initialised from ``seed``."""
    torch.manual_seed(seed)
    if w.kind == "speech":
        return Conv4(w.ways, w.input_shape, channels=w.channels)
    return MLP(1, 1, hidden=(40, 40))


def make_batch(w: Workload, seed: int, tasks: int, dtype: torch.dtype,
               device: torch.device) -> Batch:
    """A meta-batch from ``seed``: random log-mel-shaped inputs with balanced labels, or
    sinusoid points (amplitude U[0.1, 5], phase U[0, pi], x U[-5, 5])."""
    g = torch.Generator().manual_seed(seed + 1)
    if w.kind == "speech":
        h, wd = w.input_shape
        sx = torch.randn(tasks, w.ways * w.shots, 1, h, wd, generator=g)
        qx = torch.randn(tasks, w.ways * w.queries, 1, h, wd, generator=g)
        sy = torch.arange(w.ways).repeat_interleave(w.shots).repeat(tasks, 1)
        qy = torch.arange(w.ways).repeat_interleave(w.queries).repeat(tasks, 1)
    else:
        amp = 0.1 + 4.9 * torch.rand(tasks, 1, 1, generator=g)
        phase = math.pi * torch.rand(tasks, 1, 1, generator=g)
        x = 10.0 * torch.rand(tasks, w.shots + w.queries, 1, generator=g) - 5.0
        y = amp * torch.sin(x - phase)
        sx, qx, sy, qy = x[:, : w.shots], x[:, w.shots :], y[:, : w.shots], y[:, w.shots :]
    out = []
    for t in (sx, sy, qx, qy):
        t = t.to(dtype) if torch.is_floating_point(t) else t
        out.append(t.to(device))
    return tuple(out)


def metavox_algorithm(algo: str, model: nn.Module, w: Workload, strategy: str,
                      chunk: int | None = None) -> nn.Module:
    """The metavox meta-learner for ``algo``; ``track_before=False`` so that it does the
    same work as the anchors (no extra pre-adaptation forward pass)."""
    ckpt = strategy == "ckpt"
    opts = dict(inner_lr=w.inner_lr, steps=w.steps, track_before=False,
                strategy="loop" if ckpt else strategy,
                chunk_size=chunk if strategy == "vmap" else None)
    if algo in ("maml2", "fomaml"):
        return MAML(model, first_order=algo == "fomaml", inner_checkpoint=ckpt, **opts)
    if algo == "anil":
        return ANIL(model, **opts)
    if algo == "reptile":
        return Reptile(model, **opts)
    raise ValueError(f"unknown algorithm {algo!r}")


def build_step(impl: str, algo: str, model: nn.Module, w: Workload,
               chunk: int | None = None) -> Step:
    """One meta-gradient computation (no optimiser step): leaves ``.grad`` on ``model``."""
    if impl.startswith("metavox-"):
        strategy = impl.removeprefix("metavox-").removesuffix("-bf16")
        learner = metavox_algorithm(algo, model, w, strategy, chunk).train()
        params = list(model.parameters())
        device_type = params[0].device.type
        bf16 = impl.endswith("-bf16")

        def step(batch: Batch) -> None:
            for p in params:
                p.grad = None
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                loss = learner(batch).loss
            loss.backward()

        return step
    model.train()
    make = ANCHORS[impl][algo]
    return make(model, w.inner_lr, w.steps, algo == "fomaml", default_loss)


def available_impls() -> dict[str, str | None]:
    """Implementation -> None when it loads, else the reason it does not."""
    out: dict[str, str | None] = {i: None for i in IMPLS if i.startswith("metavox-")}
    for name, load in (("learn2learn", load_learn2learn), ("higher", load_higher)):
        try:
            load()
            out[name] = None
        except Exception as exc:  # noqa: BLE001 - report any failure to load
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


# -- gradient check -------------------------------------------------------------------


def meta_gradient(impl: str, algo: str, model: nn.Module, w: Workload, batch: Batch,
                  chunk: int | None = None) -> Tensor:
    """The flattened meta-gradient of ``impl`` on a private copy of ``model``."""
    model = copy.deepcopy(model)
    build_step(impl, algo, model, w, chunk)(batch)
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters()])


def gradient_check(w: Workload, algo: str, impls: list[str], seed: int, tasks: int,
                   device: torch.device, chunk: int | None = None) -> dict[str, float]:
    """Relative error of each implementation's float64 meta-gradient against learn2learn's."""
    model = make_model(w, seed).double().to(device)
    batch = make_batch(w, seed, tasks, torch.float64, device)
    ref = meta_gradient(REFERENCE, algo, model, w, batch)
    errors = {REFERENCE: 0.0}
    for impl in impls:
        if impl != REFERENCE:
            g = meta_gradient(impl, algo, model, w, batch, chunk)
            errors[impl] = float((g - ref).norm() / ref.norm())
    return errors


def bf16_deviation(w: Workload, algo: str, impl: str, seed: int, tasks: int,
                   device: torch.device, chunk: int | None = None) -> float:
    """Relative difference of a bfloat16-autocast variant's float32 meta-gradient from
    learn2learn's float32 one (information only: rounding, not a bug, makes it non-zero;
    for scale, learn2learn's own float32 and float64 gradients differ by a few percent at
    inner lr 0.4)."""
    model = make_model(w, seed).to(device)
    batch = make_batch(w, seed, tasks, torch.float32, device)
    ref = meta_gradient(REFERENCE, algo, model, w, batch)
    g = meta_gradient(impl, algo, model, w, batch, chunk)
    return float((g - ref).norm() / ref.norm())


def float32_deviation(w: Workload, algo: str, seed: int, tasks: int,
                      device: torch.device) -> float:
    """Relative difference of learn2learn's float32 meta-gradient from its float64 one:
    the scale against which a lower precision's deviation is read."""
    model = make_model(w, seed).double().to(device)
    g64 = meta_gradient(REFERENCE, algo, model, w,
                        make_batch(w, seed, tasks, torch.float64, device))
    g32 = meta_gradient(REFERENCE, algo, model.float(), w,
                        make_batch(w, seed, tasks, torch.float32, device)).double()
    return float((g32 - g64).norm() / g64.norm())


# -- measurement ----------------------------------------------------------------------


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(spec: dict) -> dict:
    """Time ``spec["timed"]`` meta-gradient steps of one variant (in its own process)."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    w = Workload(**{**spec["workload"], "input_shape": tuple(spec["workload"]["input_shape"])})
    model = make_model(w, spec["seed"]).to(device)
    batch = make_batch(w, spec["seed"], w.meta_batch, torch.float32, device)
    step = build_step(spec["impl"], spec["algo"], model, w, spec.get("chunk"))
    # load torch.func's lazily imported machinery in every variant alike, so that
    # "+RSS in steps" is the steps' memory, not a one-off import
    torch.func.grad(lambda x: (x * x).sum())(torch.ones(2))
    _sync(device)
    rss_setup = _status_mb("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(spec["warmup"]):
        step(batch)
    _sync(device)
    times = []
    for _ in range(spec["timed"]):
        start = time.perf_counter()
        step(batch)
        _sync(device)
        times.append(time.perf_counter() - start)
    out = {"times": times, "rss_setup_mb": rss_setup, "peak_rss_mb": _status_mb("VmHWM")}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_worker(spec: dict) -> dict:
    """Run :func:`worker` in a fresh Python process and return its report."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        print(f"worker {spec['algo']}/{spec['impl']} failed: {last}", file=sys.stderr)
        return {"failed": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def flops_per_task(w: Workload, algo: str, seed: int, device: torch.device) -> float:
    """Matmul and convolution FLOPs of one task's meta-gradient (forward and backward),
    counted by ``FlopCounterMode`` on metavox's loop strategy."""
    model = make_model(w, seed).to(device)
    batch = make_batch(w, seed, 1, torch.float32, device)
    step = build_step("metavox-loop", algo, model, w)
    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device, n: int, reps: int = 3,
                dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of an ``n x n`` matmul in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def default_impls(conv: bool, device: torch.device) -> list[str]:
    """What runs without ``--impl``: on CUDA every strategy but the checkpointed one, with
    vmap in float32 and bfloat16; on CPU the loop (what ``auto`` picks there for
    convolutional models) and vmap only for the MLP, no bfloat16 (no hardware path on
    most CPUs)."""
    if device.type == "cuda":
        return ["metavox-loop", "metavox-vmap", "metavox-vmap-bf16", "learn2learn", "higher"]
    return ["metavox-loop"] + ([] if conv else ["metavox-vmap"]) + ["learn2learn", "higher"]


# -- report ---------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_table(rows: list[dict], device: torch.device) -> None:
    mem = "CUDA max alloc MB" if device.type == "cuda" else "peak RSS MB"
    head = ["algorithm", "implementation", "grad rel err", "tasks/s (median)", "min-max",
            "x l2l", mem, "+RSS in steps MB", "GFLOP/s", "% of peak"]
    table = [head]
    for r in rows:
        table.append([
            ALGO_NAMES[r["algo"]], r["impl"],
            "reference" if r["impl"] == REFERENCE else _fmt(r.get("error"), ".1e"),
            _fmt(r.get("rate"), ".2f"),
            f"{r['lo']:.2f}-{r['hi']:.2f}" if "lo" in r else "-",
            _fmt(r.get("ratio"), ".2f"),
            _fmt(r.get("mem"), ".0f"), _fmt(r.get("rss_delta"), ".0f"),
            _fmt(r.get("gflops"), ".1f"), _fmt(r.get("pct_peak"), ".1f"),
        ] + ([r["note"]] if r.get("note") else []))
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(len(head))]
    for i, row in enumerate(table):
        cells = [c.ljust(widths[j]) if j < len(widths) else c for j, c in enumerate(row)]
        print("| " + " | ".join(cells) + " |")
        if i == 0:
            print("|" + "|".join("-" * (wd + 2) for wd in widths) + "|")


def steps_memory_table(args, w: Workload, impls: list[str], device: torch.device) -> None:
    """Second-order MAML against the number of inner steps: peak memory grows linearly
    with the steps for implementations that keep every step's graph; checkpointing the
    inner loop keeps only the fast weights of each step."""
    rows = []
    for steps in args.inner_steps:
        ws = replace(w, steps=steps)
        errors = gradient_check(ws, "maml2", impls, args.seed, args.check_tasks, device,
                                args.chunk)
        reps: dict[str, list[dict]] = {i: [] for i in impls}
        for rep in range(args.repeats):
            for impl in impls[rep % len(impls):] + impls[: rep % len(impls)]:
                if errors[impl] < TOLERANCE:
                    spec = {"workload": ws.__dict__, "algo": "maml2", "impl": impl,
                            "seed": args.seed, "threads": args.threads, "device": str(device),
                            "warmup": args.warmup, "timed": args.steps, "chunk": args.chunk}
                    reps[impl].append(run_worker(spec))
        for impl in impls:
            ok = [x for x in reps[impl] if "failed" not in x]
            row = {"steps": steps, "impl": impl, "error": errors[impl]}
            if ok:
                key = "cuda_peak_mb" if device.type == "cuda" else "peak_rss_mb"
                row.update(rate=statistics.median(ws.meta_batch / statistics.median(x["times"])
                                                  for x in ok),
                           mem=max(x[key] for x in ok),
                           delta=max(x["peak_rss_mb"] - x["rss_setup_mb"] for x in ok))
            rows.append(row)
    base = {r["impl"]: r for r in rows if r["steps"] == 5}
    mem = "CUDA max alloc MB" if device.type == "cuda" else "peak RSS MB"
    print(f"\nsecond-order MAML, meta-batch {w.meta_batch}, {args.repeats} subprocess(es) per "
          f"cell; memory ratio = memory / the same implementation's memory at 5 steps\n")
    print(f"| inner steps | implementation | grad rel err | tasks/s | {mem} | "
          "+RSS in steps MB | memory / 5 steps |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b = base.get(r["impl"])
        key = "mem" if device.type == "cuda" else "delta"
        ratio = r[key] / b[key] if b and key in r and key in b else None
        print(f"| {r['steps']} | {r['impl']} | {_fmt(r['error'], '.1e')} | "
              f"{_fmt(r.get('rate'), '.2f')} | {_fmt(r.get('mem'), '.0f')} | "
              f"{_fmt(r.get('delta'), '.0f')} | {_fmt(ratio, '.2f')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workload", nargs="+", choices=sorted(WORKLOADS),
                    default=["speech-small", "speech-full", "sinusoid"])
    ap.add_argument("--algo", nargs="+", choices=ALGOS, default=list(ALGOS))
    ap.add_argument("--impl", nargs="+", choices=IMPLS, default=None,
                    help="default: all but metavox-ckpt, and without metavox-vmap for "
                         "convolutional models on CPU (where metavox's own 'auto' picks the loop)")
    ap.add_argument("--inner-steps", type=int, nargs="+", default=None,
                    help="instead of the speed table: second-order MAML's peak memory and "
                         "speed against the number of inner steps (e.g. 1 5 10 20)")
    ap.add_argument("--repeats", type=int, default=5, help="subprocesses per variant")
    ap.add_argument("--steps", type=int, default=5, help="timed meta-steps per subprocess")
    ap.add_argument("--warmup", type=int, default=2, help="untimed meta-steps first")
    ap.add_argument("--meta-batch", type=int, default=None, help="override the workload's")
    ap.add_argument("--check-tasks", type=int, default=2,
                    help="tasks in the float64 gradient-check episode")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=None,
                    help="tasks per vmapped call for metavox-vmap* (default: metavox's, 8 on "
                         "CUDA, all tasks on CPU)")
    ap.add_argument("--matmul-n", type=int, default=None,
                    help="peak-FLOP/s matmul size (default 2048 on CPU, 8192 on CUDA)")
    ap.add_argument("--check-only", action="store_true",
                    help="run the gradient check and stop (no timing)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: speech-small, MAML 2nd order, meta-batch 2, one "
                         "subprocess per variant with one warm-up and one timed step, one thread, "
                         "a 1-task gradient check, a 1024-size matmul for the peak")
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.workload, args.algo = ["speech-small"], ["maml2"]
        args.repeats, args.steps, args.warmup = 1, 1, 1
        args.meta_batch = args.meta_batch or 2
        args.check_tasks, args.threads = 1, args.threads or 1
        args.matmul_n = args.matmul_n or 1024
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    loaded = available_impls()
    if loaded[REFERENCE] is not None:
        sys.exit(f"learn2learn does not load ({loaded[REFERENCE]}); it is the reference. "
                 "Run: bash benchmarks/install_anchors.sh")
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    matmul_n = args.matmul_n or (8192 if device.type == "cuda" else 2048)
    peak = float("nan") if args.check_only else matmul_peak(device, matmul_n)
    if not args.check_only:
        print(f"measured peak: {peak / 1e9:.1f} GFLOP/s (float32 {matmul_n}x{matmul_n} matmul, "
              "best of 3)")
    wants_bf16 = any(i.endswith("-bf16") for i in (args.impl or default_impls(True, device)))
    peak_bf16 = float("nan")
    if wants_bf16 and not args.check_only:
        peak_bf16 = matmul_peak(device, matmul_n, dtype=torch.bfloat16)
        print(f"measured bf16 peak: {peak_bf16 / 1e9:.1f} GFLOP/s (the % of peak of *-bf16 "
              "rows is against the larger of the two peaks)")

    for name in args.workload:
        w = WORKLOADS[name]
        if args.meta_batch:
            w = replace(w, meta_batch=args.meta_batch)
        conv = w.kind == "speech"
        impls = args.impl or default_impls(conv, device)
        skipped = {i: loaded[i] for i in impls if loaded[i] is not None}
        impls = [i for i in impls if loaded[i] is None]
        if REFERENCE not in impls:
            impls.append(REFERENCE)
        print(f"\n## {name}: {w.describe()}")
        for i, why in skipped.items():
            print(f"{i}: not run, does not load ({why})")
        if args.inner_steps:
            steps_memory_table(args, w, args.impl or ["learn2learn", "metavox-loop",
                                                      "metavox-ckpt"], device)
            continue

        rows: list[dict] = []
        for algo in args.algo:
            start = time.perf_counter()
            errors = gradient_check(w, algo, impls, args.seed, args.check_tasks, device,
                                    args.chunk)
            print(f"gradient check {algo} (float64, {args.check_tasks} task(s), "
                  f"{time.perf_counter() - start:.1f} s): "
                  + ", ".join(f"{i} {e:.1e}" for i, e in errors.items() if i != REFERENCE))
            if any(i.endswith("-bf16") for i in impls):
                print(f"  scale: learn2learn float32 against float64: "
                      f"{float32_deviation(w, algo, args.seed, args.check_tasks, device):.1e}")
            for impl in (i for i in impls if i.endswith("-bf16")):
                dev = bf16_deviation(w, algo, impl, args.seed, args.check_tasks, device,
                                     args.chunk)
                print(f"  {impl}: float32 meta-gradient under bf16 autocast differs from "
                      f"learn2learn's float32 one by {dev:.1e} (relative; information only)")
            for impl in impls:
                row = {"algo": algo, "impl": impl, "error": errors[impl]}
                if errors[impl] >= TOLERANCE or not math.isfinite(errors[impl]):
                    row["note"] = "NOT TIMED: meta-gradient differs from learn2learn's"
                rows.append(row)
        if args.check_only:
            continue

        timed = [r for r in rows if "note" not in r]
        reports: dict[tuple[str, str], list[dict]] = {(r["algo"], r["impl"]): [] for r in timed}
        for rep in range(args.repeats):
            order = timed[rep % len(timed):] + timed[: rep % len(timed)] if timed else []
            for r in order:
                spec = {"workload": w.__dict__, "algo": r["algo"], "impl": r["impl"],
                        "seed": args.seed, "threads": args.threads, "device": str(device),
                        "warmup": args.warmup, "timed": args.steps, "chunk": args.chunk}
                reports[(r["algo"], r["impl"])].append(run_worker(spec))

        for algo in args.algo:
            flops = flops_per_task(w, algo, args.seed, device) if conv else None
            ref_rate = None
            for r in (r for r in timed if r["algo"] == algo):
                reps = [x for x in reports[(algo, r["impl"])] if "failed" not in x]
                if not reps:
                    r["note"] = "worker failed: " + reports[(algo, r["impl"])][0]["failed"]
                    continue
                rates = [w.meta_batch / statistics.median(x["times"]) for x in reps]
                r.update(rate=statistics.median(rates), lo=min(rates), hi=max(rates))
                key = "cuda_peak_mb" if device.type == "cuda" else "peak_rss_mb"
                r["mem"] = max(x[key] for x in reps)
                r["rss_delta"] = max(x["peak_rss_mb"] - x["rss_setup_mb"] for x in reps)
                if flops is not None:
                    r["gflops"] = flops * r["rate"] / 1e9
                    # bf16 rows: against the faster of the two (a CPU without bf16
                    # hardware multiplies bf16 far slower than float32)
                    top = max(peak, peak_bf16) if r["impl"].endswith("-bf16") else peak
                    r["pct_peak"] = 100 * flops * r["rate"] / top
                if r["impl"] == REFERENCE:
                    ref_rate = r["rate"]
            for r in (r for r in timed if r["algo"] == algo and "rate" in r):
                r["ratio"] = r["rate"] / ref_rate if ref_rate else None
            if flops is not None:
                print(f"{algo}: {flops / 1e9:.2f} GFLOP per task (matmul + conv, fwd + bwd)")
        print(f"\n{args.repeats} subprocess(es) per variant, alternating; each: {args.warmup} "
              f"warm-up + {args.steps} timed meta-step(s) of {w.meta_batch} tasks, float32\n")
        print_table(rows, device)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
