"""Meta-learn the initialisation of a linear model ``y = w*x + b`` with MAML.

Each task is a line ``y = a*x + c`` with its own slope ``a ~ N(2, 0.5)`` and intercept
``c ~ N(-1, 0.5)``; ``x ~ U[-2, 2]``. A task gives ``K`` support points, the model takes a
few SGD steps on them, and is scored on the task's query points. MAML learns the starting
``(w, b)`` from which those few steps do best, which here lies near the centre of the
task family, ``(2, -1)``.

A note on correctness. A widely copied version of this toy computes the fast weights and
then evaluates the outer (query) loss with the *original* weights, so its "meta-gradient"
is just the gradient of the query loss at the initialisation: joint training on all the
tasks, not MAML. Here the outer loss comes from ``metavox.meta.MAML``, which evaluates the
query set with the adapted weights and back-propagates through the inner step(s);
``tests/test_examples.py`` checks that gradient against finite differences.

    python examples/linear_regression.py --seed 0
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metavox.meta import MAML, MetaOutput

Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def sample_tasks(
    num_tasks: int,
    shots: int,
    queries: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> Batch:
    """``(support_x, support_y, query_x, query_y)``, each ``[num_tasks, n, 1]``."""
    slope = 2.0 + 0.5 * torch.randn(num_tasks, 1, 1, generator=generator, dtype=dtype)
    intercept = -1.0 + 0.5 * torch.randn(num_tasks, 1, 1, generator=generator, dtype=dtype)
    x = 4.0 * torch.rand(num_tasks, shots + queries, 1, generator=generator, dtype=dtype) - 2.0
    y = slope * x + intercept
    return x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:]


def make_algorithm(model: nn.Module, inner_lr: float, steps: int) -> MAML:
    """Second-order MAML on ``model``; float targets select the MSE loss."""
    return MAML(model, inner_lr=inner_lr, steps=steps, eval_steps=steps, strategy="vmap")


def train_step(algo: MAML, optimizer: torch.optim.Optimizer, batch: Batch) -> MetaOutput:
    """One meta-update: the query loss *after* adaptation, differentiated through the
    inner loop (the engine does both), then an optimizer step on the initialisation."""
    algo.train()
    optimizer.zero_grad()
    out = algo(batch)
    out.loss.backward()
    optimizer.step()
    return out


def evaluate(algo: MAML, batch: Batch) -> dict[str, float]:
    """Mean query MSE over the tasks before and after ``eval_steps`` inner steps."""
    algo.eval()
    with torch.no_grad():
        metrics = algo(batch).metrics
    return {"pre": metrics["loss_before"], "post": metrics["query_loss"]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=500, help="meta-training iterations")
    p.add_argument("--meta-batch", type=int, default=25, help="tasks per meta-update")
    p.add_argument("--shots", type=int, default=5, help="support points per task (K)")
    p.add_argument("--queries", type=int, default=10, help="query points per training task")
    p.add_argument("--steps", type=int, default=1, help="inner SGD steps")
    p.add_argument("--inner-lr", type=float, default=0.1)
    p.add_argument("--outer-lr", type=float, default=0.02, help="Adam step on the init")
    p.add_argument("--test-tasks", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Meta-train, print before/after figures on held-out tasks and return them."""
    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    model = nn.Linear(1, 1)
    algo = make_algorithm(model, args.inner_lr, args.steps)
    optimizer = torch.optim.Adam(algo.parameters(), lr=args.outer_lr)
    train_gen = torch.Generator().manual_seed(args.seed)
    test_gen = torch.Generator().manual_seed(args.seed + 10_000)
    test = sample_tasks(args.test_tasks, args.shots, 50, test_gen)

    before = evaluate(algo, test)
    for _ in range(args.iterations):
        train_step(algo, optimizer, sample_tasks(args.meta_batch, args.shots, args.queries,
                                                 train_gen))
    after = evaluate(algo, test)
    init = {"w": float(model.weight.item()), "b": float(model.bias.item())}
    seconds = time.perf_counter() - start

    print(f"{args.test_tasks} new tasks, K={args.shots}, {args.steps} inner step(s) at "
          f"lr {args.inner_lr}: query MSE")
    print(f"{'':24}{'pre-adaptation':>16}{'post-adaptation':>17}")
    print(f"{'before meta-training':24}{before['pre']:16.4f}{before['post']:17.4f}")
    print(f"{'after meta-training':24}{after['pre']:16.4f}{after['post']:17.4f}")
    print(f"learned init: w = {init['w']:.3f}, b = {init['b']:.3f}  (task means: 2, -1)")
    print(f"{seconds:.1f} s")
    return {"before": before, "after": after, "init": init, "seconds": seconds}


if __name__ == "__main__":
    main()
