"""The example scripts: quick runs of their ``main`` and the linear example's meta-gradient."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the folder is not a package)."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"metavox_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def linear() -> ModuleType:
    return load_example("linear_regression")


@pytest.fixture(scope="module")
def sinusoid() -> ModuleType:
    return load_example("sinusoid")


# -- linear regression ------------------------------------------------------------------


def test_linear_main_meta_training_helps(linear):
    torch.manual_seed(3)
    start = nn.Linear(1, 1)  # the example's initial line for seed 3
    out = linear.main(["--iterations", "150", "--seed", "3"])
    before, after = out["before"], out["after"]
    assert after["post"] < before["post"]
    assert after["post"] < after["pre"]
    assert before["post"] < before["pre"]
    centre = torch.tensor([2.0, -1.0])  # the task family's mean line
    init = torch.tensor([out["init"]["w"], out["init"]["b"]])
    first = torch.tensor([start.weight.item(), start.bias.item()])
    assert (init - centre).norm() < 0.5 * (first - centre).norm()


def _post_adaptation_query_loss(theta, batch, lr: float, steps: int):
    """Mean over tasks of the query MSE after ``steps`` SGD steps on the support MSE, for
    the line ``w*x + b`` with ``theta = (w, b)``, written out by hand (no autograd)."""
    sx, sy, qx, qy = batch
    w, b = theta
    total = 0.0
    for t in range(sx.shape[0]):
        wt, bt = w, b
        for _ in range(steps):
            r = wt * sx[t] + bt - sy[t]
            wt, bt = wt - lr * float((2 * r * sx[t]).mean()), bt - lr * float((2 * r).mean())
        total += float(((wt * qx[t] + bt - qy[t]) ** 2).mean())
    return total / sx.shape[0]


@pytest.mark.parametrize("steps", [1, 2])
def test_linear_meta_gradient_is_through_the_adaptation(linear, steps):
    """The update applied by the example's training step is MAML's meta-gradient (finite
    differences of the post-adaptation query loss), not the gradient of the query loss
    at the original weights that the widely copied version computes."""
    lr = 0.1
    gen = torch.Generator().manual_seed(0)
    batch = linear.sample_tasks(6, 5, 10, gen, dtype=torch.float64)
    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(0.3)
        model.bias.fill_(0.2)
    algo = linear.make_algorithm(model, lr, steps)
    theta0 = torch.tensor([0.3, 0.2], dtype=torch.float64)
    optimizer = torch.optim.SGD(algo.parameters(), lr=1.0)
    linear.train_step(algo, optimizer, batch)
    theta1 = torch.cat([model.weight.detach().flatten(), model.bias.detach().flatten()])
    applied = theta0 - theta1  # lr 1: the gradient the training step used

    h = 1e-6
    fd = torch.zeros(2, dtype=torch.float64)
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = h
        plus = _post_adaptation_query_loss((theta0 + e).tolist(), batch, lr, steps)
        minus = _post_adaptation_query_loss((theta0 - e).tolist(), batch, lr, steps)
        fd[i] = (plus - minus) / (2 * h)
    torch.testing.assert_close(applied, fd, rtol=1e-6, atol=1e-7)

    at_init = torch.zeros(2, dtype=torch.float64)  # gradient of the query loss at theta0
    sx, sy, qx, qy = batch
    r = theta0[0] * qx + theta0[1] - qy
    at_init[0] = (2 * r * qx).mean(dim=(1, 2)).mean()
    at_init[1] = (2 * r).mean(dim=(1, 2)).mean()
    assert float((applied - at_init).norm()) > 0.1 * float(at_init.norm())
