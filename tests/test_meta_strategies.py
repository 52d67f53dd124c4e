"""Every task-batching strategy gives the same meta-gradient (float64, ~1e-10 relative)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from meta_helpers import TinyNet, flat_grad, rel_err, tiny_episodes

from metavox.meta import (
    ANIL,
    MAML,
    MAMLPlusPlus,
    MetaSGD,
    ProtoNet,
    Reptile,
    TaskSettings,
    map_tasks,
)

ALGOS = {
    "maml": lambda m, **kw: MAML(m, inner_lr=0.3, steps=2, **kw),
    "fomaml": lambda m, **kw: MAML(m, inner_lr=0.3, steps=2, first_order=True, **kw),
    "metasgd": lambda m, **kw: MetaSGD(m, inner_lr=0.3, steps=2, **kw),
    "mamlpp": lambda m, **kw: MAMLPlusPlus(m, inner_lr=0.3, steps=3, msl_iterations=10, **kw),
    "anil": lambda m, **kw: ANIL(m, inner_lr=0.3, steps=2, **kw),
    "reptile": lambda m, **kw: Reptile(m, inner_lr=0.3, steps=3, **kw),
    "protonet": lambda m, **kw: ProtoNet(m, **kw),
}


def meta_grad(name, model, strategy, chunk_size=None, task_backward=True):
    algo = ALGOS[name](copy.deepcopy(model), strategy=strategy, chunk_size=chunk_size,
                       task_backward=task_backward)
    out = algo(tiny_episodes(tasks=5))
    out.loss.backward()
    return flat_grad(algo), out


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "nobn"])
@pytest.mark.parametrize("name", list(ALGOS))
def test_loop_vmap_chunked_agree(name, batch_norm):
    torch.manual_seed(0)
    model = TinyNet(batch_norm=batch_norm).double()
    g_loop, out_loop = meta_grad(name, model, "loop")
    g_vmap, out_vmap = meta_grad(name, model, "vmap")
    g_chunk, _ = meta_grad(name, model, "vmap", chunk_size=2)
    assert g_loop.norm() > 0
    assert rel_err(g_vmap, g_loop) < 1e-10
    assert rel_err(g_chunk, g_loop) < 1e-10
    assert out_vmap.metrics["loss"] == pytest.approx(out_loop.metrics["loss"], rel=1e-12)
    assert set(out_vmap.metrics) == set(out_loop.metrics)


def test_native_batchnorm_under_vmap_is_why_we_normalise_explicitly():
    """Without TaskBatchNorm, vmapped second-order MAML's gradient is wrong; with it, exact."""
    torch.manual_seed(0)
    model = TinyNet(batch_norm=True).double()
    g_loop, _ = meta_grad("maml", model, "loop")
    algo = ALGOS["maml"](copy.deepcopy(model), strategy="vmap").train()
    # the task objective vmapped by hand, outside the explicit-normalisation context that
    # forward() enters: PyTorch's native batch-norm kernel under vmap
    settings = TaskSettings(ways=3, steps=algo.steps)
    objective = functools.partial(algo.task_objective, settings=settings)
    per_task = map_tasks(objective, tiny_episodes(tasks=5), strategy="vmap")
    per_task["loss"].mean().backward()
    assert rel_err(flat_grad(algo), g_loop) > 1e-6


def test_native_batchnorm_in_the_loop_equals_the_explicit_form():
    """The loop keeps PyTorch's native (faster) kernel: same meta-gradient as explicit."""
    from metavox.meta import TaskBatchNorm

    torch.manual_seed(0)
    model = TinyNet(batch_norm=True).double()
    g_native, _ = meta_grad("maml", model, "loop")
    algo = ALGOS["maml"](copy.deepcopy(model), strategy="loop")
    with TaskBatchNorm():
        algo(tiny_episodes(tasks=5)).loss.backward()
    assert rel_err(flat_grad(algo), g_native) < 1e-10


def test_auto_strategy_is_loop_on_cpu_for_convnets_and_vmap_otherwise():
    from metavox.meta import resolve_strategy

    assert resolve_strategy("auto", torch.device("cpu"), None) == ("loop", None)
    assert resolve_strategy("auto", torch.device("cpu"), 4, convolutional=False) == ("vmap", 4)
    assert resolve_strategy("auto", torch.device("cuda"), None)[0] == "vmap"
    with pytest.raises(ValueError, match="strategy"):
        resolve_strategy("fast", torch.device("cpu"), None)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
@pytest.mark.parametrize("name", list(ALGOS))
def test_backward_task_by_task_gives_the_same_meta_gradient(name, strategy):
    """Taking each task's (each chunk's) gradient as soon as it is computed, to hold one
    task's graph instead of the meta-batch's, changes memory, not the result; the loss
    is an ordinary loss for the caller (it scales, and adds to other terms)."""
    torch.manual_seed(0)
    model = TinyNet().double()
    g_eager, out_eager = meta_grad(name, model, strategy, chunk_size=2)
    g_graph, out_graph = meta_grad(name, model, strategy, chunk_size=2, task_backward=False)
    assert g_graph.norm() > 0
    assert rel_err(g_eager, g_graph) < 1e-12
    assert out_eager.metrics == pytest.approx(out_graph.metrics, rel=1e-12)
    algo = ALGOS[name](copy.deepcopy(model), strategy=strategy)
    (3.0 * algo(tiny_episodes(tasks=5)).loss).backward()
    assert rel_err(flat_grad(algo), 3.0 * g_graph) < 1e-12


def test_backward_task_by_task_with_inner_checkpointing():
    torch.manual_seed(0)
    model = TinyNet().double()
    grads = []
    for eager in (True, False):
        algo = MAML(copy.deepcopy(model), inner_lr=0.3, steps=3, strategy="loop",
                    inner_checkpoint=True, task_backward=eager)
        algo(tiny_episodes(tasks=3)).loss.backward()
        grads.append(flat_grad(algo))
    assert rel_err(grads[0], grads[1]) < 1e-12


def test_explicit_batch_norm_keeps_float32_statistics_for_bfloat16_input():
    from metavox.meta.functional import explicit_batch_norm

    torch.manual_seed(0)
    x = 100.0 + torch.randn(16, 4, 5, 5)  # a large mean: rounding it would show
    w, b = torch.rand(4) + 0.5, torch.randn(4)
    ref = explicit_batch_norm(x, w, b)
    half = explicit_batch_norm(x.bfloat16(), w, b)
    assert half.dtype == torch.bfloat16
    # only the input's own bfloat16 rounding (≈0.4% of 100 = 0.4, i.e. ~0.4 σ) remains;
    # statistics computed in bfloat16 would add an error of the same size again
    native = torch.nn.functional.batch_norm(x.bfloat16().float(), None, None, w, b,
                                            training=True)
    assert torch.allclose(half.float(), native, atol=0.05)
    assert (ref - native).abs().max() > 0.05  # the input rounding itself is visible


def test_autocast_reaches_inside_vmap():
    """torch.autocast reaches only some calls inside torch.vmap (the first MAML steps'
    convolutions in bfloat16, later ones in float32; on CUDA this ended in a bfloat16
    activation meeting a float32 bias). The engine casts explicitly, so that every
    convolution and matrix product of the vmap strategy runs in bfloat16, as in the loop."""
    torch.manual_seed(0)
    model = TinyNet(batch_norm=True)
    seen: list[torch.dtype] = []
    for layer in (model.body[0], model.head):
        layer.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    grads, losses = {}, {}
    for strategy in ("loop", "vmap"):
        for bf16 in (False, True):
            seen.clear()
            algo = MAML(model, inner_lr=0.3, steps=2, strategy=strategy)
            algo.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = algo(tiny_episodes(tasks=4, dtype=torch.float32))
            out.loss.backward()
            assert set(seen) == {torch.bfloat16 if bf16 else torch.float32}, (strategy, bf16)
            assert all(p.grad.dtype == torch.float32 for p in algo.parameters())
            grads[strategy, bf16], losses[strategy, bf16] = flat_grad(algo), out.loss.item()
    assert rel_err(grads["vmap", False], grads["loop", False]) < 1e-5
    assert rel_err(grads["loop", True], grads["loop", False]) > 1e-3  # bfloat16 is visible
    assert losses["vmap", True] == pytest.approx(losses["loop", True], rel=0.02)
    # evaluation (eval mode, no graph) under autocast
    algo = MAML(model, inner_lr=0.3, steps=2, strategy="vmap").eval()
    seen.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert algo(tiny_episodes(tasks=4, dtype=torch.float32)).per_task["accuracy"].shape == (4,)
    assert set(seen) == {torch.bfloat16}
