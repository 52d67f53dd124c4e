"""Few-shot sinusoid regression (Finn et al. 2017, section 5.1) on a CPU budget.

A task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]``, phase ``phi ~ U[0, pi]``
and inputs ``x ~ U[-5, 5]``; the network is the paper's 1-40-40-1 ReLU MLP. Four ways to
get a starting point that K samples of a new task can adapt, trained separately for each K:

- ``maml``: second-order MAML, 1 inner SGD step at lr 0.01, meta-batch 25, Adam 1e-3;
- ``fomaml``: the same with the inner gradient treated as a constant (first order);
- ``reptile``: Reptile, several inner SGD steps on each task's support and query points;
- ``pretrained``: one MLP fitted by plain regression to points pooled from many tasks
  (the same task stream), the paper's "pretrained" baseline.

Every model is then evaluated the same way: on held-out tasks, SGD with lr 0.01 on the
K support points, query MSE on 100 fresh points of the task after 0, 1 and 10 steps,
mean and 95% confidence interval (1.96 sigma / sqrt(n)) over the tasks.

The paper trains 70,000 meta-iterations; the default here is far fewer (a few minutes on
two CPU cores in total) and ``--iterations`` raises it. Tasks are run with
``strategy="vmap"``: for this tiny MLP the per-task Python loop is dominated by call
overhead and was ~15x slower per meta-iteration here.

    python examples/sinusoid.py --seed 0               # table and docs/images/sinusoid.png
    python examples/sinusoid.py --quick --out /tmp/s.png
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metavox.meta import MAML, Reptile, forward, functional_buffers, inner_loop, meta_parameters
from metavox.models import MLP

METHODS = ("maml", "fomaml", "reptile", "pretrained")
LABELS = {"maml": "MAML", "fomaml": "first-order MAML", "reptile": "Reptile",
          "pretrained": "pretrained"}
EVAL_STEPS = (0, 1, 10)
DEFAULT_FIGURE = Path(__file__).resolve().parents[1] / "docs" / "images" / "sinusoid.png"

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


# -- tasks ------------------------------------------------------------------------------


def sample_sinusoids(num_tasks: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Amplitudes ``U[0.1, 5]`` and phases ``U[0, pi]``, each ``[num_tasks, 1, 1]``."""
    amplitude = 0.1 + 4.9 * torch.rand(num_tasks, 1, 1, generator=generator)
    phase = math.pi * torch.rand(num_tasks, 1, 1, generator=generator)
    return amplitude, phase


def sample_points(
    amplitude: Tensor, phase: Tensor, num_points: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``num_points`` inputs ``U[-5, 5]`` per task and their targets, ``[T, n, 1]`` each."""
    x = 10.0 * torch.rand(amplitude.shape[0], num_points, 1, generator=generator) - 5.0
    return x, amplitude * torch.sin(x - phase)


def sample_batch(num_tasks: int, shots: int, generator: torch.Generator) -> Batch:
    """A meta-training batch: K support and K query points for each of ``num_tasks``."""
    x, y = sample_points(*sample_sinusoids(num_tasks, generator), 2 * shots, generator)
    return x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:]


# -- training ---------------------------------------------------------------------------


def make_algorithm(method: str, model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """The meta-learner for ``method`` (``pretrained`` trains ``model`` itself)."""
    if method in ("maml", "fomaml"):
        return MAML(model, inner_lr=args.inner_lr, steps=1, first_order=method == "fomaml",
                    strategy=args.strategy)
    if method == "reptile":
        return Reptile(model, inner_lr=args.reptile_lr, steps=args.reptile_steps,
                       train_on_query=True, track_before=False, strategy=args.strategy)
    if method == "pretrained":
        return model
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def train(method: str, shots: int, args: argparse.Namespace) -> nn.Module:
    """Train one MLP by ``method`` for ``args.iterations`` on K-shot tasks; return it.

    Every method starts from the same initial weights and sees the same task stream.
    """
    torch.manual_seed(args.seed)
    model = MLP(1, 1, hidden=(40, 40))
    algo = make_algorithm(method, model, args)
    optimizer = torch.optim.Adam(algo.parameters(), lr=args.outer_lr)
    gen = torch.Generator().manual_seed(args.seed * 1000 + shots)
    algo.train()
    for _ in range(args.iterations):
        sx, sy, qx, qy = sample_batch(args.meta_batch, shots, gen)
        optimizer.zero_grad()
        if method == "pretrained":  # plain regression on all the batch's points, pooled
            x, y = torch.cat([sx, qx], 1).flatten(0, 1), torch.cat([sy, qy], 1).flatten(0, 1)
            loss = F.mse_loss(model(x), y)
        else:
            loss = algo((sx, sy, qx, qy)).loss
        loss.backward()
        optimizer.step()
    return model


# -- evaluation -------------------------------------------------------------------------


def finetune_outputs(
    model: nn.Module, sx: Tensor, sy: Tensor, x: Tensor, steps: int, lr: float
) -> Tensor:
    """Outputs on ``x`` after 0..steps SGD steps on each task's support set.

    Inputs are ``[T, n, 1]``; the result is ``[T, steps + 1, len(x[t]), 1]``. Plain SGD on
    the support MSE at step size ``lr``, the same for every method.
    """
    params = {k: v.detach() for k, v in meta_parameters(model).items()}
    buffers = functional_buffers(model)

    def one_task(sx: Tensor, sy: Tensor, x: Tensor) -> Tensor:
        outs = [forward(model, params, x, buffers)]
        for fast in inner_loop(model, params, sx, sy, steps=steps, lr=lr, first_order=True,
                               buffers=buffers):
            outs.append(forward(model, fast, x, buffers))
        return torch.stack(outs)

    with torch.no_grad():
        return torch.vmap(one_task)(sx, sy, x)


def evaluate(model: nn.Module, test: Batch, lr: float) -> dict[int, dict[str, float]]:
    """Mean query MSE and its 95% CI over the test tasks after each of ``EVAL_STEPS``."""
    sx, sy, qx, qy = test
    outs = finetune_outputs(model, sx, sy, qx, max(EVAL_STEPS), lr)
    mse = (outs - qy.unsqueeze(1)).pow(2).mean(dim=(2, 3))  # [T, steps + 1]
    table = {}
    for s in EVAL_STEPS:
        col = mse[:, s]
        ci = 1.96 * float(col.std()) / math.sqrt(col.numel())
        table[s] = {"mean": float(col.mean()), "ci95": ci}
    return table


def test_tasks(num_tasks: int, shots: int, seed: int) -> Batch:
    """Held-out tasks: K support points and 100 query points each (seeded apart from
    training). The K=5 support sets are the first 5 points of the K=10 ones."""
    gen = torch.Generator().manual_seed(seed + 12345)
    amplitude, phase = sample_sinusoids(num_tasks, gen)
    sx, sy = sample_points(amplitude, phase, 10, gen)
    qx, qy = sample_points(amplitude, phase, 100, gen)
    return sx[:, :shots], sy[:, :shots], qx, qy


# -- figure -----------------------------------------------------------------------------


def plot(models: dict[int, dict[str, nn.Module]], args: argparse.Namespace, path: Path) -> None:
    """For one test task and each K: MAML and the pretrained baseline before and after
    1 and 10 steps, with the true curve and the K support points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots_list = sorted(models)
    fig, axes = plt.subplots(len(shots_list), 2, figsize=(10, 3.6 * len(shots_list)),
                             squeeze=False, sharex=True, sharey=True)
    grid = torch.linspace(-5, 5, 200).view(1, -1, 1)
    for row, shots in enumerate(shots_list):
        sx, sy, qx, qy = test_tasks(1, shots, args.seed)
        amplitude, phase = _task_of(sx, sy, qx, qy)
        truth = amplitude * torch.sin(grid - phase)
        for col, method in enumerate(("maml", "pretrained")):
            ax = axes[row][col]
            outs = finetune_outputs(models[shots][method], sx, sy, grid, 10, args.inner_lr)[0]
            ax.plot(grid[0, :, 0], truth[0, :, 0], color="tab:red", lw=2, label="ground truth")
            ax.plot(grid[0, :, 0], outs[0, :, 0], ":", color="tab:green", label="pre-update")
            ax.plot(grid[0, :, 0], outs[1, :, 0], "--", color="tab:green", label="1 grad step")
            ax.plot(grid[0, :, 0], outs[10, :, 0], "-", color="tab:green", alpha=0.8,
                    label="10 grad steps")
            ax.scatter(sx[0, :, 0], sy[0, :, 0], marker="^", color="tab:purple", zorder=3,
                       label="K points used for grad")
            ax.set_title(f"{LABELS[method]}, K={shots}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _task_of(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
    """Recover the first test task's amplitude and phase by least squares on its points
    (``A sin(x - phi) = A cos(phi) sin x - A sin(phi) cos x``)."""
    x = torch.cat([sx[0], qx[0]]).double()
    y = torch.cat([sy[0], qy[0]]).double()
    design = torch.cat([torch.sin(x), -torch.cos(x)], dim=1)
    c, s = torch.linalg.lstsq(design, y).solution.flatten()
    return torch.hypot(c, s).float(), torch.atan2(s, c).float()


# -- script -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations per method and K (default 2000, quick 30)")
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10], help="values of K")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--meta-batch", type=int, default=25, help="tasks per meta-update")
    p.add_argument("--inner-lr", type=float, default=0.01, help="MAML's and evaluation's step")
    p.add_argument("--outer-lr", type=float, default=1e-3, help="Adam, every method")
    p.add_argument("--reptile-lr", type=float, default=0.02)
    p.add_argument("--reptile-steps", type=int, default=5)
    p.add_argument("--test-tasks", type=int, default=None, help="default 600, quick 50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", default="vmap", choices=("vmap", "loop"),
                   help="how the engine runs a meta-batch's tasks")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest for these tiny tensors)")
    p.add_argument("--out", type=Path, default=DEFAULT_FIGURE, help="figure path")
    p.add_argument("--quick", action="store_true", help="a few seconds' smoke run")
    args = p.parse_args(argv)
    if args.iterations is None:
        args.iterations = 30 if args.quick else 2000
    if args.test_tasks is None:
        args.test_tasks = 50 if args.quick else 600
    if args.quick:
        args.meta_batch = min(args.meta_batch, 5)
    return args


def format_table(table: dict[int, dict[str, dict[int, dict[str, float]]]]) -> str:
    """The results as a Markdown table: query MSE, mean ± 95% CI."""
    head = "| K | method | " + " | ".join(
        "pre-update" if s == 0 else f"{s} step{'s' if s > 1 else ''}" for s in EVAL_STEPS)
    lines = [head + " |", "|---|---|" + "---|" * len(EVAL_STEPS)]
    for shots, rows in table.items():
        for method, cols in rows.items():
            cells = " | ".join(f"{cols[s]['mean']:.3f} ± {cols[s]['ci95']:.3f}"
                               for s in EVAL_STEPS)
            lines.append(f"| {shots} | {LABELS[method]} | {cells} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """Train every method for every K, print the table, save the figure, return results."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    table: dict[int, dict[str, dict[int, dict[str, float]]]] = {}
    train_seconds: dict[int, dict[str, float]] = {}
    models: dict[int, dict[str, nn.Module]] = {}
    for shots in args.shots:
        test = test_tasks(args.test_tasks, shots, args.seed)
        table[shots], train_seconds[shots], models[shots] = {}, {}, {}
        for method in args.methods:
            t0 = time.perf_counter()
            model = train(method, shots, args)
            train_seconds[shots][method] = time.perf_counter() - t0
            models[shots][method] = model
            table[shots][method] = evaluate(model, test, args.inner_lr)
            print(f"K={shots} {method}: trained in {train_seconds[shots][method]:.1f} s",
                  flush=True)
    figure = None
    if {"maml", "pretrained"} <= set(args.methods):
        figure = str(args.out)
        plot(models, args, args.out)
    seconds = time.perf_counter() - start
    print(f"\nQuery MSE on {args.test_tasks} held-out tasks after SGD (lr {args.inner_lr}) on K "
          f"points, mean ± 95% CI; {args.iterations} training iterations per method and K, "
          f"seed {args.seed}\n")
    print(format_table(table))
    print(f"\ntotal {seconds:.0f} s" + (f"; figure: {figure}" if figure else ""))
    return {"table": table, "train_seconds": train_seconds, "seconds": seconds,
            "figure": figure, "config": {k: str(v) if isinstance(v, Path) else v
                                         for k, v in vars(args).items()}}


if __name__ == "__main__":
    main()
