"""Non-meta-learned baselines through the same episode interface.

``FineTune`` answers the question every reader asks: does meta-learning beat plain
transfer learning? A network pre-trained as an ordinary classifier on the meta-training
classes gets a new, zero-initialised N-way head per test episode, trained on the support
set — the head alone (``mode="head"``, on features computed once) or the whole network
(``mode="all"``). With an untrained network and ``mode="all"`` it is training from
scratch on the support set. These are evaluation-only: their "loss" has no meta-gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metavox.meta.anil import split_body_head
from metavox.meta.base import MetaAlgorithm, StepRecorder, TaskSettings
from metavox.meta.functional import forward, functional_buffers, meta_parameters
from metavox.meta.inner import inner_loop
from metavox.meta.learner import register_learner_kind
from metavox.meta.registry import register_algorithm

FINETUNE_MODES = ("head", "all")


class _Head(nn.Module):
    """A linear head on flattened features (its size is set per episode's ways).

    It starts at zero, with no random draw (which ``torch.vmap`` refuses inside a task);
    its parameters keep ``nn.Linear``'s names (``linear.weight``, ``linear.bias``)."""

    def __init__(self, dim: int, ways: int) -> None:
        super().__init__()
        self.linear = nn.Module()
        self.linear.weight = nn.Parameter(torch.zeros(ways, dim))
        self.linear.bias = nn.Parameter(torch.zeros(ways))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.flatten(1), self.linear.weight, self.linear.bias)


class _Net(nn.Module):
    """Body, normalised and scaled features, then a head: the fine-tuned network."""

    def __init__(self, body: nn.Module, head: nn.Module, scale: float) -> None:
        super().__init__()
        self.body, self.head, self.scale = body, head, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.scale * F.normalize(self.body(x).flatten(1), dim=1))


@register_learner_kind("finetune", features=lambda module: module.body)
def _finetuned(model: nn.Module, info: dict[str, Any]) -> nn.Module:
    """The structure of a fine-tuned learner: ``info`` gives ``dim``, ``ways``, ``scale``."""
    body, _ = split_body_head(model)
    return _Net(body, _Head(int(info["dim"]), int(info["ways"])), float(info["scale"]))


@register_algorithm("finetune", description="pre-train + fine-tune: a new head (and, with "
                    "mode='all', the body) trained on each support set; evaluation only",
                    meta_trained=False)
class FineTune(MetaAlgorithm):
    """Fine-tune a pre-trained (or untrained) network on each episode's support set.

    Features are L2-normalised and scaled by ``scale`` before the new, zero-initialised
    head (a cosine-style classifier, which makes one step size work across backbones).

    Args:
        model: a network with ``body`` and ``head`` (the head is replaced per episode).
        inner_lr: step size of the new head.
        steps: fine-tuning steps per episode (``eval_steps``, if given, wins: there is no
            training).
        mode: ``"head"`` (on features computed once) or ``"all"`` (the body too, with
            step size ``body_lr``).
        common: see :class:`~metavox.meta.base.MetaAlgorithm`.
    """

    fixed_ways = False

    learner_kind = "finetune"

    def __init__(self, model: nn.Module, *, inner_lr: float = 0.5, steps: int = 100,
                 eval_steps: int | None = None, mode: str = "head", body_lr: float = 0.01,
                 scale: float = 10.0, **common: Any) -> None:
        if mode not in FINETUNE_MODES:
            raise ValueError(f"mode must be one of {FINETUNE_MODES}, got {mode!r}")
        body, _ = split_body_head(model)
        super().__init__(body, **common)
        self.mode, self.inner_lr, self.body_lr = mode, float(inner_lr), float(body_lr)
        self.steps = self.eval_steps = int(steps if eval_steps is None else eval_steps)
        self.scale = float(scale)

    def _features(self, params, buffers, x: Tensor) -> Tensor:
        f = forward(self.model, params, x, buffers).flatten(1)
        return self.scale * F.normalize(f, dim=1)

    def _with_new_head(self, params, buffers, support_x: Tensor, ways: int) -> _Net:
        """The body with a new head for ``ways`` classes (starting at zero), sized by the
        support's features and in their precision, float32 at least (a frozen body has
        no weight to take it from)."""
        with torch.no_grad():
            f0 = self._features(params, buffers, support_x)
        net = _Net(self.model, _Head(f0.shape[1], ways), self.scale)
        net.head.to(device=f0.device, dtype=torch.promote_types(f0.dtype, torch.float32))
        return net

    def _lr(self, name: str, step: int) -> float:
        return self.inner_lr if name.startswith("head.") else self.body_lr

    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
        settings: TaskSettings,
    ) -> dict[str, Tensor]:
        ways = settings.ways
        body_params = {k: v.detach() for k, v in meta_parameters(self.model).items()}
        buffers = functional_buffers(self.model)
        if self.mode == "head":
            fs = self._features(body_params, buffers, support_x)
            fq = self._features(body_params, buffers, query_x)
            # features are bfloat16 under autocast; the new head's weights stay float32
            head = _Head(fs.shape[1], ways).to(
                device=fs.device, dtype=torch.promote_types(fs.dtype, torch.float32))
            start = {k: torch.zeros_like(v) for k, v in head.named_parameters()}
            trajectory = inner_loop(head, start, fs, support_y, steps=settings.steps,
                                    lr=self.inner_lr, first_order=True, loss_fn=self.loss_fn)
            run = lambda p: forward(head, p, fq, {})  # noqa: E731
        else:
            net = self._with_new_head(body_params, buffers, support_x, ways)
            head0 = {f"head.{k}": torch.zeros_like(v) for k, v in net.head.named_parameters()}
            start = {**{f"body.{k}": v for k, v in body_params.items()}, **head0}
            trajectory = inner_loop(net, start, support_x, support_y, steps=settings.steps,
                                    lr=self._lr, first_order=True, loss_fn=self.loss_fn)
            net_buffers = functional_buffers(net)
            run = lambda p: forward(net, p, query_x, net_buffers)  # noqa: E731
        record = StepRecorder(settings, run, query_y)
        out = run(record.follow(trajectory, start)).detach()
        loss = self.loss_fn(out, query_y)
        return record.finish({}, objective=loss, query_loss=loss, logits=out)

    def adapted_module(self, support_x: Tensor, support_y: Tensor,
                       steps: int) -> tuple[nn.Module, dict[str, Any]]:
        """The network with a new head fine-tuned on one support set (and, with
        ``mode="all"``, its body)."""
        ways = int(support_y.max().item()) + 1
        params = {k: v.detach() for k, v in meta_parameters(self.model).items()}
        net = self._with_new_head(params, functional_buffers(self.model), support_x, ways)
        dim = net.head.linear.weight.shape[1]
        names = [k for k, _ in net.named_parameters() if k.startswith("head.")]
        module = self.fine_tuned(net, support_x, support_y, steps, lr=self._lr,
                                 adapt_names=names if self.mode == "head" else None)
        return module, {"dim": int(dim), "ways": ways, "scale": self.scale}
