"""The algorithm registry: one constructor signature, strict options, a new algorithm in
one class, and the config path through it."""

from __future__ import annotations

import pytest
import torch
from meta_helpers import TinyNet, tiny_episodes
from torch import Tensor

from metavox.meta import (
    ALGORITHMS,
    MAML,
    InnerLoopAlgorithm,
    Learner,
    MetaAlgorithm,
    TaskSettings,
    create_algorithm,
    list_algorithms,
    register_algorithm,
)
from metavox.meta.learner import export_module
from metavox.meta.registry import UnknownOptionError


def test_every_name_builds_with_the_common_signature():
    for name, spec in ALGORITHMS.items():
        algo = create_algorithm(name, TinyNet())
        assert isinstance(algo, spec.cls) and isinstance(algo, MetaAlgorithm)
        assert list_algorithms()[name] == spec.description
        if isinstance(algo, InnerLoopAlgorithm):  # the same words, the same defaults
            algo = create_algorithm(name, TinyNet(), inner_lr=0.2, steps=3, eval_steps=7)
            assert (algo.inner_lr, algo.steps, algo.eval_steps) == (0.2, 3, 7)
            assert create_algorithm(name, TinyNet()).eval_steps == 5


def test_presets_define_the_variants():
    assert create_algorithm("fomaml", TinyNet()).first_order
    assert create_algorithm("metasgd", TinyNet()).lr_mode == "per_parameter"
    pp = create_algorithm("mamlpp", TinyNet())
    assert (pp.lr_mode, pp.multi_step_loss, bool(pp.bn_names)) == ("per_step", True, True)
    with pytest.raises(UnknownOptionError, match="fixes first_order=True"):
        create_algorithm("fomaml", TinyNet(), first_order=False)


def test_unknown_options_are_errors_that_name_them():
    with pytest.raises(UnknownOptionError, match=r"'protonet' does not take \['inner_lr'\]"):
        create_algorithm("protonet", TinyNet(), inner_lr=0.1)
    with pytest.raises(UnknownOptionError, match=r"does not take \['lr'\].*lr_mode"):
        create_algorithm("maml", TinyNet(), lr="per_step")  # the old name of lr_mode
    with pytest.raises(ValueError, match="did you mean 'maml'"):
        create_algorithm("mamll", TinyNet())


def test_a_new_algorithm_is_one_class(monkeypatch):
    """A toy algorithm registered in a few lines trains, records steps and adapts through
    the same engine as the built-in ones (nothing else to touch)."""
    monkeypatch.setattr("metavox.meta.registry.ALGORITHMS", dict(ALGORITHMS))
    import metavox.meta.registry as registry

    @register_algorithm("headless", description="a toy: MAML's objective, no tracking")
    class Headless(InnerLoopAlgorithm):
        def __init__(self, model, *, inner_lr: float = 0.4, steps: int = 5,
                     eval_steps: int | None = None, strategy: str = "auto") -> None:
            super().__init__(model, inner_lr=inner_lr, steps=steps, eval_steps=eval_steps,
                             track_before=False, strategy=strategy)
            self.inner = MAML(model, inner_lr=inner_lr, steps=steps, eval_steps=eval_steps,
                              track_before=False, strategy="loop")

        def task_objective(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
                           settings: TaskSettings) -> dict[str, Tensor]:
            return self.inner.task_objective(sx, sy, qx, qy, settings)

        def adapt(self, support_x, support_y, *, steps=None, classes=None) -> Learner:
            return Learner(export_module(self.model, {}, support_x), classes)

    assert "headless" in registry.ALGORITHMS
    algo = create_algorithm("headless", TinyNet().double(), inner_lr=0.3, steps=2)
    out = algo(tiny_episodes(tasks=2), iteration=4)
    out.loss.backward()
    assert all(p.grad is not None for p in algo.model.parameters())
    with torch.no_grad():
        curve = algo.eval()(tiny_episodes(tasks=2), record_steps=True).accuracy_by_step
    assert curve.shape == (2, 3)
    with pytest.raises(UnknownOptionError, match="first_order"):
        create_algorithm("headless", TinyNet(), first_order=True)
