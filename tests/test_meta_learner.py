"""adapt() returns a learner that classifies new inputs and exports as a plain module."""

from __future__ import annotations

import pytest
import torch
from meta_helpers import TinyNet, tiny_episodes

from metavox.data import EpisodeBatch
from metavox.meta import ALGORITHMS, ANIL, MAML, Learner, ProtoNet, create_algorithm
from metavox.models import Conv4, create_model


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_adapt_gives_a_learner_that_exports(name, tmp_path):
    torch.manual_seed(0)
    algo = create_algorithm(name, TinyNet(ways=3))
    sx, sy, qx, qy = tiny_episodes(tasks=1, shots=4, dtype=torch.float32)
    learner = algo.adapt(sx[0], sy[0])
    logits = learner(qx[0])
    assert logits.shape == (9, 3)
    module = learner.to_module()
    assert isinstance(module, torch.nn.Module) and not module.training
    assert torch.allclose(module(qx[0]), logits)
    # one clip alone gets the same answer as in the batch: no transduction at deployment
    assert torch.allclose(module(qx[0][:1]), logits[:1], atol=1e-5)
    assert learner.predict(qx[0]).shape == (9,)
    probs = learner.predict_proba(qx[0])
    assert torch.allclose(probs.sum(-1), torch.ones(9))
    # the meta-model itself is untouched by adaptation
    assert all(p.grad is None for p in algo.parameters())
    # it saves itself and loads around a freshly built model of the same architecture
    learner.classes = ["a", "b", "c"]
    learner.save(tmp_path / "l.safetensors", meta={"note": 1})
    torch.manual_seed(1)
    back = Learner.load(tmp_path / "l.safetensors", TinyNet(ways=3))
    assert back.classes == ["a", "b", "c"] and back.kind == learner.kind
    assert torch.allclose(back(qx[0]), logits, atol=1e-6)


def test_adaptation_improves_query_accuracy():
    torch.manual_seed(0)
    algo = MAML(TinyNet(ways=3, batch_norm=False), inner_lr=0.5, steps=10)
    sx, sy, qx, qy = tiny_episodes(tasks=1, shots=5, queries=10, dtype=torch.float32)
    before = (algo.model(qx[0]).argmax(-1) == qy[0]).float().mean()
    after = (algo.adapt(sx[0], sy[0]).predict(qx[0]) == qy[0]).float().mean()
    assert after > before and after >= 0.8


def test_episode_batch_in_metrics_out():
    torch.manual_seed(0)
    sx, sy, qx, qy = tiny_episodes(tasks=2, dtype=torch.float32)
    batch = EpisodeBatch(sx, sy, qx, qy, classes=[["a", "b", "c"]] * 2)
    assert batch.ways == 3 and batch.num_tasks == 2
    out = MAML(TinyNet(), steps=2)(batch)
    assert out.loss.requires_grad and out.per_task["loss"].shape == (2,)
    assert {"loss", "accuracy", "accuracy_before", "loss_before"} <= set(out.metrics)
    assert 0.0 <= out.metrics["accuracy"] <= 1.0
    with pytest.raises(ValueError, match="task dimension"):
        MAML(TinyNet())((sx[0], sy[0], qx, qy))
    with pytest.raises(ValueError, match="disagree"):
        EpisodeBatch(sx, sy[:, :2], qx, qy)


def test_eval_steps_zero_is_no_adaptation():
    torch.manual_seed(0)
    algo = MAML(TinyNet(), steps=1, eval_steps=0).eval()
    out = algo(tiny_episodes(tasks=2, dtype=torch.float32))
    assert out.metrics["accuracy"] == pytest.approx(out.metrics["accuracy_before"])


def test_anil_and_protonet_use_the_body_head_split():
    model = create_model("conv4", num_classes=5, input_shape=(40, 101), channels=8)
    assert isinstance(model, Conv4) and model.feature_dim == 8 * 2 * 6
    assert model(torch.randn(2, 1, 40, 101)).shape == (2, 5)
    assert ANIL(model).head is model.head
    assert ProtoNet(model).model is model.body
    with pytest.raises(TypeError, match="body"):
        ANIL(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vgg", num_classes=2, input_shape=(4, 4))


@pytest.mark.parametrize("name", ["maml", "reptile", "anil", "metasgd"])
def test_record_steps_gives_the_accuracy_curve_in_one_pass(name):
    torch.manual_seed(0)
    algo = create_algorithm(name, TinyNet(), eval_steps=3).eval()
    batch = tiny_episodes(tasks=2, dtype=torch.float32)
    with torch.no_grad():
        out = algo(batch, record_steps=True)
    curve = out.accuracy_by_step
    assert curve.shape == (2, 4)  # tasks x (steps 0..3)
    assert torch.equal(curve[:, 0], out.per_task["accuracy_before"])
    assert torch.equal(curve[:, 3], out.per_task["accuracy"])
    # the curve's points are the accuracies of shorter adaptations; nothing is stored
    with torch.no_grad():
        short = algo(batch, steps=2)
    assert short.metrics["accuracy"] == pytest.approx(float(curve[:, 2].mean()))
    assert short.accuracy_by_step is None and algo.eval_steps == 3
