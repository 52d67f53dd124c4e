"""Rejection-trained Proto-MAML (protoreject): its meta-gradient is the true gradient of
the open-set loss after adaptation (float64, against finite differences), for each
objective; and the learned rule travels with the adapted model (save, load, ONNX)."""

from __future__ import annotations

import copy

import pytest
import torch
from meta_helpers import TinyNet, rel_err, tiny_episodes

from metavox.meta import ProtoReject, adapt, forward
from metavox.meta.protonet import prototype_head
from metavox.meta.reject import rejection_loss, unknown_offsets


def open_episode(seed: int = 0):
    """One 3-way 2-shot task whose query also holds 4 unknown clips (label -1)."""
    sx, sy, qx, qy = tiny_episodes(tasks=1, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    ux = 2.0 * torch.randn(1, 4, 1, 6, 6, generator=g, dtype=sx.dtype)
    qx = torch.cat([qx, ux], 1)
    qy = torch.cat([qy, torch.full((1, 4), -1)], 1)
    return sx, sy, qx, qy


def reference_loss(model, theta, episode, algo, cohort):
    """The protoreject task loss as a plain function of all meta-parameters ``theta``
    (the model's, then the rejection coefficients, then log tau)."""
    names = [n for n, _ in model.named_parameters()]
    params, i = {}, 0
    for n, p in model.named_parameters():
        params[n] = theta[i:i + p.numel()].view(p.shape)
        i += p.numel()
    coef, log_tau = theta[i:i + 4], theta[i + 4]
    sx, sy, qx, qy = (t[0] for t in episode)
    assert names[-2:] == ["head.weight", "head.bias"]
    feats = forward(model.body, {k[5:]: v for k, v in params.items() if k.startswith("body.")},
                    sx).flatten(1)
    w, b = prototype_head(feats, sy, 3)
    start = {**params, "head.weight": w, "head.bias": b}
    fast = adapt(model, start, sx, sy, steps=2, lr=0.3)
    s_logits, q_logits = forward(model, fast, sx), forward(model, fast, qx)
    c_logits = forward(model, fast, cohort)
    u = unknown_offsets(coef, s_logits, sy, 3, c_logits, algo.cohort_top)
    return rejection_loss(q_logits - u, qy, objective=algo.objective, tau=log_tau.exp(),
                          margin=algo.margin, logits=q_logits)


@pytest.mark.parametrize("objective", ["nplus1", "margin"])
def test_meta_gradient_matches_finite_differences(objective):
    torch.manual_seed(3)
    model = TinyNet(batch_norm=False).double()
    episode = open_episode()
    cohort = torch.randn(6, 1, 6, 6, dtype=torch.float64)
    algo = ProtoReject(copy.deepcopy(model), inner_lr=0.3, steps=2, strategy="loop",
                       head_init="prototypes", objective=objective, margin=0.5,
                       temperature=2.0, cohort_top=3).double()
    algo.set_cohort(cohort)
    algo.cohort_x = algo.cohort_x.double()
    with torch.no_grad():  # away from zero, so every coefficient's term matters
        algo.reject_coef.copy_(torch.tensor([0.3, -0.2, 0.4, 0.1]))
    algo(episode).loss.backward()
    params = [*algo.model.parameters(), algo.reject_coef, algo.log_tau]
    analytic = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                          for p in params])
    assert algo.reject_coef.grad.abs().min() > 0 and algo.log_tau.grad.abs() > 0
    theta = torch.cat([p.detach().flatten() for p in params])
    dirs = torch.randn(10, theta.numel(), dtype=theta.dtype)
    eps = 1e-6
    fd = torch.stack([(reference_loss(model, theta + eps * v, episode, algo, cohort)
                       - reference_loss(model, theta - eps * v, episode, algo, cohort))
                      / (2 * eps) for v in dirs])
    assert rel_err(dirs @ analytic, fd) < 1e-6


def test_learned_rule_survives_save_load_and_onnx(tmp_path) -> None:
    """Adapt a protoreject model, save it as `metavox adapt` does, load it, export it to
    ONNX: every route gives the same scores and the same accept/reject decisions."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnxruntime as ort

    from metavox.audio.features import build_frontend
    from metavox.kws.export import export_onnx
    from metavox.meta.openset import OpenSet
    from metavox.pipeline.build import build_algorithm, build_model
    from metavox.pipeline.config import config_from_dict
    from metavox.pipeline.enroll import Adapted, load_adapted, save_adapted

    cfg = config_from_dict({"model": {"name": "mlp", "options": {"hidden": [16]}},
                            "algorithm": {"name": "protoreject", "inner_lr": 0.3, "steps": 1,
                                          "cohort": 8}})
    frontend = cfg.frontend_config()
    shape = (frontend.num_features, frontend.num_frames)
    torch.manual_seed(0)
    algo = build_algorithm(cfg, build_model(cfg, shape, 3))
    with torch.no_grad():
        algo.reject_coef.copy_(torch.tensor([0.2, 0.5, 0.3, 0.05]))
    waves = torch.randn(14, frontend.num_samples) * torch.linspace(0.01, 0.3, 14)[:, None]
    feats = build_frontend(frontend)(waves).unsqueeze(1)
    algo.set_cohort(feats[6:])
    sy = torch.tensor([0, 0, 1, 1, 2, 2])
    learner = algo.adapt(feats[:6], sy, classes=["a", "b", "c"])
    offsets = learner.module.offsets
    assert learner.kind == "reject" and offsets.abs().sum() > 0
    # the module's outputs are the adapted logits minus the learned unknown logits
    torch.testing.assert_close(learner(feats), learner.module.inner(feats) - offsets)
    adapted = Adapted(learner, frontend, OpenSet("learned", threshold=0.0))
    path = save_adapted(tmp_path / "words.safetensors", adapted,
                        type("Run", (), {"config": cfg, "meta": {"ways": 3}})())
    back = load_adapted(path)
    assert back.learner.kind == "reject" and back.open_set.rule == "learned"
    torch.testing.assert_close(back.learner.module.offsets, offsets)
    before, after = adapted.values(feats), back.values(feats)
    torch.testing.assert_close(after, before)
    decide = [a.open_set.decide(v)[0] for a, v in ((adapted, before), (back, after))]
    assert torch.equal(*decide) and (decide[0] == -1).any() and (decide[0] >= 0).any()
    onnx_path = export_onnx(back, tmp_path / "words.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: waves.numpy()})
    names = [o.name for o in session.get_outputs()]
    values = got[names.index("values")] if "values" in names else got[0]
    np.testing.assert_allclose(values, before.numpy(), rtol=1e-4, atol=1e-4)
    word = got[names.index("word")] if "word" in names else got[-1]
    np.testing.assert_array_equal(word, decide[0].numpy())


def test_accuracy_by_step_is_what_the_adapted_model_answers() -> None:
    """The recorded curve's step ``s`` is the closed-set accuracy of the learner adapted
    with ``s`` steps (its scores, offsets included), on the known queries only."""
    torch.manual_seed(4)
    algo = ProtoReject(TinyNet(batch_norm=False).double(), inner_lr=0.5, steps=3,
                       strategy="loop", head_init="prototypes").double()
    with torch.no_grad():
        algo.reject_coef.copy_(torch.tensor([0.3, 0.8, 0.0, 0.1]))
    sx, sy, qx, qy = open_episode(seed=2)
    algo.eval()
    out = algo((sx, sy, qx, qy), steps=3, record_steps=True)
    curve = out.accuracy_by_step[0]
    assert curve.shape == (4,) and float(curve[-1]) == out.metrics["accuracy"]
    known = qy[0] >= 0
    for s in range(4):
        learner = algo.adapt(sx[0], sy[0], steps=s)
        right = (learner(qx[0][known]).argmax(-1) == qy[0][known]).double().mean()
        assert float(curve[s]) == pytest.approx(float(right))
