"""Non-meta-learned baselines through the same episode interface.

``FineTune`` answers the question every reader asks: does meta-learning beat plain
transfer learning? A network pre-trained as an ordinary classifier on the meta-training
classes gets a new, zero-initialised N-way head per test episode, trained on the support
set — the head alone (``mode="head"``, on features computed once) or the whole network
(``mode="all"``). With an untrained network and ``mode="all"`` it is training from
scratch on the support set. These are evaluation-only: their "loss" has no meta-gradient.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metavox.meta.anil import split_body_head
from metavox.meta.base import Learner, MetaAlgorithm, accuracy, export_module
from metavox.meta.functional import forward, functional_buffers, meta_parameters
from metavox.meta.inner import adapt, inner_loop

FINETUNE_MODES = ("head", "all")


class _Head(nn.Module):
    """A linear head on flattened features (its size is set per episode's ways)."""

    def __init__(self, dim: int, ways: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, ways)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


class FineTune(MetaAlgorithm):
    """Fine-tune a pre-trained (or untrained) network on each episode's support set.

    Features are L2-normalised and scaled by ``scale`` before the new head (a cosine-style
    classifier, which makes one step size work across backbones).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: str = "head",
        steps: int = 100,
        lr: float = 0.5,
        body_lr: float = 0.01,
        scale: float = 10.0,
        strategy: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        if mode not in FINETUNE_MODES:
            raise ValueError(f"mode must be one of {FINETUNE_MODES}, got {mode!r}")
        body, _ = split_body_head(model)
        super().__init__(body, strategy=strategy, chunk_size=chunk_size)
        self.mode, self.steps, self.lr, self.body_lr = mode, int(steps), float(lr), float(body_lr)
        self.scale = float(scale)
        self.feature_dim = int(getattr(model, "feature_dim", 0)) or None

    def _features(self, params, buffers, x: Tensor) -> Tensor:
        f = forward(self.model, params, x, buffers).flatten(1)
        return self.scale * F.normalize(f, dim=1)

    def _network(self, ways: int, dim: int) -> nn.Module:
        return _Net(self.model, _Head(dim, ways), self.scale)

    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> dict[str, Tensor]:
        ways = self._ways
        body_params = {k: v.detach() for k, v in meta_parameters(self.model).items()}
        buffers = functional_buffers(self.model)
        metrics: dict[str, Tensor] = {}
        if self.mode == "head":
            fs = self._features(body_params, buffers, support_x)
            fq = self._features(body_params, buffers, query_x)
            # features are bfloat16 under autocast; the new head's weights stay float32
            head = _Head(fs.shape[1], ways).to(
                device=fs.device, dtype=torch.promote_types(fs.dtype, torch.float32))
            zeros = {k: torch.zeros_like(v) for k, v in head.named_parameters()}
            trajectory = inner_loop(head, zeros, fs, support_y, steps=self.steps, lr=self.lr,
                                    first_order=True)
            run = lambda p: forward(head, p, fq, {})  # noqa: E731
            start = zeros
        else:
            ref = next(iter(body_params.values()))
            with torch.no_grad():
                dim = self._features(body_params, buffers, support_x).shape[1]
            net = self._network(ways, dim)
            net.head.to(device=ref.device, dtype=ref.dtype)
            head0 = {f"head.{k}": torch.zeros_like(v) for k, v in net.head.named_parameters()}
            start = {**{f"body.{k}": v for k, v in body_params.items()}, **head0}

            def lr(name: str, step: int) -> float:
                return self.lr if name.startswith("head.") else self.body_lr

            trajectory = inner_loop(net, start, support_x, support_y, steps=self.steps, lr=lr,
                                    first_order=True)
            net_buffers = functional_buffers(net)
            run = lambda p: forward(net, p, query_x, net_buffers)  # noqa: E731
        record = self.start_recording(metrics, True)
        fast = self.follow(trajectory, start, record_until=self.steps + 1 if record else 0,
                           query_logits=run, query_y=query_y, metrics=metrics)
        out = run(fast).detach()
        loss = F.cross_entropy(out, query_y)
        metrics.update({"loss": loss, "query_loss": loss, "accuracy": accuracy(out, query_y)})
        return metrics

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        *,
        classes: list[str] | None = None,
        **_: object,
    ) -> Learner:
        """Fine-tune on one support set; the learner is the network with its new head."""
        ways = int(support_y.max().item()) + 1
        body = copy.deepcopy(self.model)
        params = {k: v.detach() for k, v in meta_parameters(body).items()}
        with torch.no_grad():
            dim = self._features(params, functional_buffers(body), support_x).shape[1]
        ref = next(iter(params.values()))
        net = _Net(body, _Head(dim, ways), self.scale)
        net.head.to(device=ref.device, dtype=ref.dtype)
        start = {k: (torch.zeros_like(v) if k.startswith("head.") else v.detach())
                 for k, v in net.named_parameters()}
        names = [k for k in start if k.startswith("head.")] if self.mode == "head" else None
        with torch.enable_grad():
            fast = adapt(net, start, support_x, support_y, steps=self.steps,
                         lr=lambda n, s: self.lr if n.startswith("head.") else self.body_lr,
                         first_order=True, adapt_names=names)
        return Learner(export_module(net, fast, support_x), classes)


class _Net(nn.Module):
    """Body, normalised and scaled features, then a head: the fine-tuned network."""

    def __init__(self, body: nn.Module, head: nn.Module, scale: float) -> None:
        super().__init__()
        self.body, self.head, self.scale = body, head, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.scale * F.normalize(self.body(x).flatten(1), dim=1))
