"""The speed benchmark's anchors: learn2learn 0.2.0 and higher 0.2.1, run as documented.

Loading learn2learn. Its package ``__init__`` imports ``learn2learn.vision``, whose datasets
import torchvision at module level, and no CPU torchvision exists for torch 2.13.
:func:`load_learn2learn` therefore registers an empty module object under the name
``learn2learn.vision`` in ``sys.modules`` before ``import learn2learn``; Python's import
system then takes it as already imported. That is the only thing replaced: every other
submodule, including ``learn2learn.algorithms.maml``, ``base_learner`` and ``utils``
(``clone_module``, ``update_module``), is imported from the installed package unmodified,
and nothing touches torchvision itself. gym's deprecation notice, printed on stderr while
``learn2learn.gym`` imports it, is captured.

The step functions below take a meta-batch ``(sx, sy, qx, qy)`` with a leading task
dimension and leave the meta-gradient in ``.grad`` of the model's parameters: the loss is
the mean over tasks, as in :class:`metavox.meta.MAML`. Each task's loss is backpropagated
as soon as the task is done, as both libraries' own MAML examples do, so only one task's
graph is alive at a time (the memory-friendly way to use them).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import types
from collections.abc import Callable

import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor, Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
Step = Callable[[Batch], None]

STUBBED = "learn2learn.vision"


def load_learn2learn() -> types.ModuleType:
    """``import learn2learn`` with only ``learn2learn.vision`` stubbed (see module doc)."""
    if "learn2learn" in sys.modules:
        return sys.modules["learn2learn"]
    stub = types.ModuleType(STUBBED)
    stub.__doc__ = "Stub registered by metavox's benchmark: the real one needs torchvision."
    sys.modules[STUBBED] = stub
    if os.environ.get("METAVOX_L2L_SOURCE_TREE"):
        _stub_compiled_data()
    with contextlib.redirect_stderr(io.StringIO()):
        import learn2learn
    return learn2learn


COMPILED = ("learn2learn.data.meta_dataset", "learn2learn.data.task_dataset",
            "learn2learn.data.transforms")


def _stub_compiled_data() -> None:
    """Fallback for a machine that cannot compile learn2learn's three Cython modules (the
    episodic *data-loading* classes, which MAML does not use): each is registered as a
    module whose every attribute is an empty placeholder class, so that ``learn2learn.data``
    imports from the unbuilt source tree on ``PYTHONPATH``. Chosen only when the
    environment variable ``METAVOX_L2L_SOURCE_TREE`` is set (benchmarks/gpu_check.sh does
    so when the build fails); MAML's own modules are untouched either way."""
    for name in COMPILED:
        mod = types.ModuleType(name)
        mod.__doc__ = "Placeholder registered by metavox's benchmark: learn2learn's unbuilt C."
        mod.__getattr__ = lambda attr, _n=name: type(attr, (), {"__module__": _n})
        sys.modules[name] = mod


def load_higher() -> types.ModuleType:
    """``import higher`` (pure Python, installs and imports as is)."""
    import higher

    return higher


def _zero(params) -> None:
    for p in params:
        p.grad = None


def _accumulate(params: list[nn.Parameter], grads, scale: float) -> None:
    for p, g in zip(params, grads, strict=True):
        g = g.detach() * scale
        p.grad = g if p.grad is None else p.grad + g


def _reptile_task(params: list[nn.Parameter], adapted: nn.Module, loss_fn: LossFn,
                  qx: Tensor, qy: Tensor, num: int) -> None:
    """Reptile's share of one task, whichever library adapted it: the query loss without
    gradient (as metavox computes it for its metrics), then ``(θ − φ) / num`` added to
    ``.grad``."""
    with torch.no_grad():
        loss_fn(adapted(qx), qy)
        fast = [p.detach() for p in adapted.parameters()]
        _accumulate(params, [p - f for p, f in zip(params, fast, strict=True)], 1.0 / num)


# -- learn2learn: MAML(model, lr, first_order), clone(), adapt() ------------------------


def l2l_maml(model: nn.Module, lr: float, steps: int, first_order: bool, loss_fn: LossFn) -> Step:
    """(FO)MAML as learn2learn's documentation writes it."""
    l2l = load_learn2learn()
    maml = l2l.algorithms.MAML(model, lr=lr, first_order=first_order)
    params = list(model.parameters())

    def step(batch: Batch) -> None:
        _zero(params)
        sx, sy, qx, qy = batch
        num = sx.shape[0]
        for t in range(num):  # backward per task, as learn2learn's examples do
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(loss_fn(learner(sx[t]), sy[t]))
            (loss_fn(learner(qx[t]), qy[t]) / num).backward()

    return step


def l2l_anil(model: nn.Module, lr: float, steps: int, first_order: bool, loss_fn: LossFn) -> Step:
    """ANIL as learn2learn's ANIL example writes it: ``MAML`` wraps the head only, the
    body's features are computed outside the inner loop (support and query separately,
    so BatchNorm sees the same batches as in metavox)."""
    l2l = load_learn2learn()
    body, head = model.body, l2l.algorithms.MAML(model.head, lr=lr, first_order=first_order)
    params = list(model.parameters())

    def step(batch: Batch) -> None:
        _zero(params)
        sx, sy, qx, qy = batch
        num = sx.shape[0]
        for t in range(num):
            fs, fq = body(sx[t]), body(qx[t])
            learner = head.clone()
            for _ in range(steps):
                learner.adapt(loss_fn(learner(fs), sy[t]))
            (loss_fn(learner(fq), qy[t]) / num).backward()

    return step


def l2l_reptile(model: nn.Module, lr: float, steps: int, first_order: bool,
                loss_fn: LossFn) -> Step:
    """Reptile with learn2learn's first-order ``MAML`` for the inner SGD steps; the
    gradient is ``mean_t(θ − φ_t)``. The adapted model's query loss is evaluated without
    gradient, as metavox does for its metrics."""
    l2l = load_learn2learn()
    maml = l2l.algorithms.MAML(model, lr=lr, first_order=True)
    params = list(model.parameters())

    def step(batch: Batch) -> None:
        _zero(params)
        sx, sy, qx, qy = batch
        num = sx.shape[0]
        for t in range(num):
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(loss_fn(learner(sx[t]), sy[t]))
            _reptile_task(params, learner, loss_fn, qx[t], qy[t], num)

    return step


# -- higher: innerloop_ctx(model, opt, copy_initial_weights=False) ----------------------


def higher_maml(model: nn.Module, lr: float, steps: int, first_order: bool,
                loss_fn: LossFn, *, adapt_module: nn.Module | None = None) -> Step:
    """(FO)MAML as higher's documentation writes it. Second order: the query loss is
    backpropagated through the differentiable optimiser. First order:
    ``track_higher_grads=False`` detaches every step, and the query-loss gradient at the
    adapted weights is added to the initial weights' ``.grad``.

    ``adapt_module`` (ANIL) is the part adapted in the inner loop; the rest of ``model``
    then must be its ``body``, run once per set outside the loop.
    """
    higher = load_higher()
    anil = adapt_module is not None
    inner = adapt_module if anil else model
    opt = torch.optim.SGD(inner.parameters(), lr=lr)
    params = list(model.parameters())
    inner_params = list(inner.parameters())

    def step(batch: Batch) -> None:
        _zero(params)
        sx, sy, qx, qy = batch
        num = sx.shape[0]
        for t in range(num):
            xs, xq = (model.body(sx[t]), model.body(qx[t])) if anil else (sx[t], qx[t])
            with higher.innerloop_ctx(inner, opt, copy_initial_weights=False,
                                      track_higher_grads=not first_order) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(loss_fn(fmodel(xs), sy[t]))
                loss = loss_fn(fmodel(xq), qy[t]) / num
                if first_order:
                    # the adapted weights are detached leaves: their gradient is the
                    # first-order meta-gradient; ANIL's body gets its own through xq
                    fast = list(fmodel.parameters())
                    loss.backward()
                    _accumulate(inner_params, [f.grad for f in fast], 1.0)
                else:
                    loss.backward()  # per task, as higher's MAML example does

    return step


def higher_anil(model: nn.Module, lr: float, steps: int, first_order: bool,
                loss_fn: LossFn) -> Step:
    """ANIL with higher: ``innerloop_ctx`` on the head, body features outside."""
    return higher_maml(model, lr, steps, first_order, loss_fn, adapt_module=model.head)


def higher_reptile(model: nn.Module, lr: float, steps: int, first_order: bool,
                   loss_fn: LossFn) -> Step:
    """Reptile with higher: ``track_higher_grads=False`` inner SGD, gradient
    ``mean_t(θ − φ_t)``, query loss evaluated without gradient."""
    higher = load_higher()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    params = list(model.parameters())

    def step(batch: Batch) -> None:
        _zero(params)
        sx, sy, qx, qy = batch
        num = sx.shape[0]
        for t in range(num):
            with higher.innerloop_ctx(model, opt, copy_initial_weights=False,
                                      track_higher_grads=False) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(loss_fn(fmodel(sx[t]), sy[t]))
                _reptile_task(params, fmodel, loss_fn, qx[t], qy[t], num)

    return step


ANCHORS: dict[str, dict[str, Callable[..., Step]]] = {
    "learn2learn": {"maml2": l2l_maml, "fomaml": l2l_maml, "anil": l2l_anil,
                    "reptile": l2l_reptile},
    "higher": {"maml2": higher_maml, "fomaml": higher_maml, "anil": higher_anil,
               "reptile": higher_reptile},
}
