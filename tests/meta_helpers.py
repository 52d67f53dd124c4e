"""Tiny models and episodes for the engine tests (float64 where gradients are compared)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A conv net small enough for finite differences; optional BatchNorm."""

    def __init__(self, ways: int = 3, batch_norm: bool = True) -> None:
        super().__init__()
        norm = nn.BatchNorm2d(3) if batch_norm else nn.Identity()
        self.body = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), norm, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
        )
        self.head = nn.Linear(3 * 3 * 3, ways)

    def forward(self, x):
        return self.head(self.body(x))


def tiny_episodes(tasks: int = 4, ways: int = 3, shots: int = 2, queries: int = 3, seed: int = 0,
                  dtype=torch.float64):
    """Random episodes with labels 0..ways-1 and a learnable class signal."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(tasks, ways, 1, 6, 6, generator=g, dtype=dtype)

    def draw(n):
        y = torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)
        x = centres[torch.arange(tasks)[:, None], y] + 0.5 * torch.randn(
            tasks, ways * n, 1, 6, 6, generator=g, dtype=dtype)
        return x, y

    sx, sy = draw(shots)
    qx, qy = draw(queries)
    return sx, sy, qx, qy


def flat_grad(module: nn.Module) -> torch.Tensor:
    return torch.cat([
        (p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
        for p in module.parameters()
    ])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
