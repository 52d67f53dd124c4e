"""Fast-adapting reinforcement learning with metavox's functional inner loop: MAML on the
2-D point-navigation tasks of Finn et al. (2017).

A point starts at the origin; each task hides a goal in [-0.5, 0.5]^2; an action moves the
point by at most 0.1 per axis; the reward is minus the distance to the goal, over 100
steps. The policy is a Gaussian MLP (2 -> 100 -> 100 -> 2 means, a learned log standard
deviation). The inner loop is one step of REINFORCE with a baseline (returns-to-go minus a
per-task linear baseline fitted by least squares, advantages normalised) on 20
trajectories sampled with the current policy, taken by :func:`metavox.meta.inner.adapt`;
the outer loop differentiates the same policy-gradient loss on 20 new trajectories sampled
with the adapted policy through that step (MAML) or not (first-order MAML), averaged over
20 tasks, with Adam. (Finn et al. used TRPO for the outer step; plain policy gradient is
enough for this task family.)

Compared on held-out goals, with the same inner steps: the meta-learned policy; a policy
pre-trained with the same policy gradient on goals drawn every episode (the average goal:
stay near the middle); and a random initialisation. Writes ``results.json`` and a plot of
the return against the number of inner steps.

    python examples/maml_rl_navigation.py --out runs/navigation          # about 3 min
    python examples/maml_rl_navigation.py --quick --out /tmp/navigation  # seconds (CI)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from metavox.meta.functional import Params, forward, meta_parameters
from metavox.meta.inner import adapt

HORIZON = 100
MAX_STEP = 0.1


class Policy(nn.Module):
    """A Gaussian policy: ``forward(obs)`` is ``[means (2), log std (2)]`` per row."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 2))
        self.log_std = nn.Parameter(torch.zeros(2))

    def forward(self, obs: Tensor) -> Tensor:
        mean = self.net(obs)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)


def policy_gradient_loss(out: Tensor, target: Tensor) -> Tensor:
    """REINFORCE: ``-mean(log pi(a|s) * advantage)``; ``target`` is ``[actions (2),
    advantage (1)]`` per row (the inner loop's loss function)."""
    mean, log_std = out[:, :2], out[:, 2:]
    actions, advantage = target[:, :2], target[:, 2]
    logp = (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std).sum(-1)
    return -(logp * advantage).mean()


@dataclass
class Rollouts:
    """Trajectories of one task: observations ``[M, H, 2]``, raw actions ``[M, H, 2]``,
    rewards ``[M, H]``."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor

    @property
    def mean_return(self) -> float:
        return float(self.rewards.sum(1).mean())


def rollout(policy: nn.Module, params: Params, goals: Tensor, trajectories: int,
            gen: torch.Generator) -> list[Rollouts]:
    """``trajectories`` episodes per goal (``goals [T, 2]``), all tasks stepped together."""
    t = len(goals)
    pos = torch.zeros(t, trajectories, 2)
    obs, acts, rews = [], [], []
    with torch.no_grad():
        for _ in range(HORIZON):
            out = forward(policy, params, pos.reshape(-1, 2)).reshape(t, trajectories, 4)
            mean, std = out[..., :2], out[..., 2:].exp()
            action = mean + std * torch.randn(mean.shape, generator=gen)
            obs.append(pos)
            acts.append(action)
            pos = pos + action.clamp(-MAX_STEP, MAX_STEP)
            rews.append(-(pos - goals[:, None]).norm(dim=-1))
    o, a, r = torch.stack(obs, 2), torch.stack(acts, 2), torch.stack(rews, 2)
    return [Rollouts(o[k], a[k], r[k]) for k in range(t)]


def advantages(r: Rollouts, gamma: float = 0.99) -> Tensor:
    """Returns-to-go minus a linear baseline in (position, time) fitted to them by least
    squares, normalised: ``[M * H]``."""
    m, h = r.rewards.shape
    g = torch.zeros_like(r.rewards)
    running = torch.zeros(m)
    for k in range(h - 1, -1, -1):
        running = r.rewards[:, k] + gamma * running
        g[:, k] = running
    time = (torch.arange(h, dtype=torch.float32) / h).expand(m, h)
    feats = torch.cat([r.obs, r.obs ** 2, torch.stack([time, time ** 2, time ** 3,
                                                       torch.ones_like(time)], -1)], -1)
    x, y = feats.reshape(m * h, -1).double(), g.reshape(-1).double()
    coef = torch.linalg.solve(x.T @ x + 1e-5 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
    adv = (y - x @ coef).float()
    return (adv - adv.mean()) / (adv.std() + 1e-8)


def batch(r: Rollouts) -> tuple[Tensor, Tensor]:
    """The policy-gradient loss's inputs: observations ``[M*H, 2]``, ``[actions, adv]``."""
    return r.obs.reshape(-1, 2), torch.cat([r.actions.reshape(-1, 2),
                                            advantages(r)[:, None]], dim=1)


def inner_step(policy: nn.Module, params: Params, r: Rollouts, lr: float,
               first_order: bool) -> Params:
    """One REINFORCE step on a task's rollouts by the engine's functional inner loop."""
    x, y = batch(r)
    return adapt(policy, params, x, y, steps=1, lr=lr, loss_fn=policy_gradient_loss,
                 first_order=first_order)


@dataclass
class Settings:
    iterations: int = 200
    tasks: int = 20  # per meta-batch
    trajectories: int = 20  # per task, before and after the inner step
    inner_lr: float = 0.1
    outer_lr: float = 0.003  # 0.01 shrank the policy's noise until one step barely moved it
    test_tasks: int = 40
    test_steps: int = 3
    seed: int = 0


def goals(n: int, gen: torch.Generator) -> Tensor:
    return torch.rand(n, 2, generator=gen) - 0.5


def start(s: Settings) -> tuple[Policy, torch.optim.Optimizer, torch.Generator]:
    """A policy initialised by ``s.seed``, its Adam, and the sampling generator."""
    torch.manual_seed(s.seed)
    policy = Policy()
    return (policy, torch.optim.Adam(policy.parameters(), lr=s.outer_lr),
            torch.Generator().manual_seed(s.seed))


def meta_train(s: Settings, *, first_order: bool, progress: bool = False) -> Policy:
    """MAML (or first-order MAML) with policy gradients inside and out."""
    policy, opt, gen = start(s)
    for it in range(s.iterations):
        params = meta_parameters(policy)
        g = goals(s.tasks, gen)
        before = rollout(policy, params, g, s.trajectories, gen)
        fast = [inner_step(policy, params, r, s.inner_lr, first_order) for r in before]
        loss, after_returns = 0.0, []
        for k in range(s.tasks):  # sampled with the adapted policy, differentiated through it
            after = rollout(policy, fast[k], g[k:k + 1], s.trajectories, gen)[0]
            after_returns.append(after.mean_return)
            x, y = batch(after)
            loss = loss + policy_gradient_loss(forward(policy, fast[k], x), y) / s.tasks
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress and it % 25 == 0:
            print(f"{'fomaml' if first_order else 'maml'} iteration {it}: return before "
                  f"{np.mean([r.mean_return for r in before]):.1f}, after one step "
                  f"{np.mean(after_returns):.1f}, std {policy.log_std.exp().tolist()}",
                  flush=True)
    return policy


def pretrain(s: Settings) -> Policy:
    """The same policy gradient on goals drawn every iteration, no inner step: the
    policy best on average over goals."""
    policy, opt, gen = start(s)
    for _ in range(s.iterations):
        params = meta_parameters(policy)
        runs = rollout(policy, params, goals(s.tasks, gen), s.trajectories, gen)
        loss = sum(policy_gradient_loss(forward(policy, params, x), y)
                   for x, y in map(batch, runs)) / s.tasks
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy


def returns_by_step(policy: Policy, s: Settings) -> np.ndarray:
    """Mean return on each held-out goal after 0..``test_steps`` inner steps
    (``[tasks, steps + 1]``); the same goals and noise for every policy."""
    gen = torch.Generator().manual_seed(s.seed + 10_000)
    test = goals(s.test_tasks, gen)
    out = np.zeros((s.test_tasks, s.test_steps + 1))
    for k in range(s.test_tasks):
        params = {n: p.detach() for n, p in meta_parameters(policy).items()}
        for step in range(s.test_steps + 1):
            r = rollout(policy, params, test[k:k + 1], s.trajectories, gen)[0]
            out[k, step] = r.mean_return
            if step < s.test_steps:
                params = {n: p.detach() for n, p in
                          inner_step(policy, params, r, s.inner_lr, True).items()}
    return out


def run(out: Path, s: Settings, *, progress: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    policies = {
        "MAML": meta_train(s, first_order=False, progress=progress),
        "first-order MAML": meta_train(s, first_order=True, progress=progress),
        "pre-trained on all goals": pretrain(s),
        "random initialisation": start(s)[0],
    }
    rows = {}
    for name, policy in policies.items():
        r = returns_by_step(policy, s)
        mean = r.mean(0)
        half = 1.96 * r.std(0, ddof=1) / np.sqrt(len(r))
        rows[name] = {"mean": mean.round(2).tolist(), "ci95": half.round(2).tolist()}
    summary = {"settings": asdict(s), "returns_by_inner_step": rows}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    lines = ["| policy | " + " | ".join(f"{k} step{'s' if k != 1 else ''}"
                                          for k in range(s.test_steps + 1)) + " |",
             "|---" * (s.test_steps + 2) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{m:.1f} ± {h:.1f}" for m, h in zip(row["mean"], row["ci95"], strict=True)) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(out / "returns.png", rows)
    return summary


def plot(path: Path, rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, row in rows.items():
        steps = np.arange(len(row["mean"]))
        ax.errorbar(steps, row["mean"], yerr=row["ci95"], marker="o", capsize=3, label=name)
    ax.set_xlabel("inner policy-gradient steps on the new goal")
    ax.set_ylabel("mean return (held-out goals)")
    ax.set_xticks(steps)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/navigation"))
    p.add_argument("--quick", action="store_true", help="few iterations and tasks: seconds")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    s = Settings(seed=args.seed)
    if args.quick:
        s = Settings(iterations=40, tasks=8, trajectories=10, outer_lr=0.01, test_tasks=12,
                     test_steps=2, seed=args.seed)
    return run(args.out, s, progress=not args.quick)


if __name__ == "__main__":
    main()
