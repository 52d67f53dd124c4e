"""Prototypical networks (Snell et al. 2017), the metric-learning baseline.

Each class's prototype is the mean embedding of its support examples; a query's logits are
its negative squared Euclidean distances to the prototypes. No inner loop: adaptation is
computing the prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metavox.meta.base import Learner, MetaAlgorithm, accuracy, export_module
from metavox.meta.functional import forward, functional_buffers, meta_parameters


def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Mean embedding per class: ``[ways, dim]``."""
    one_hot = F.one_hot(labels, ways).to(embeddings.dtype)
    return one_hot.t() @ embeddings / one_hot.sum(0).clamp_min(1).unsqueeze(1)


def prototype_logits(embeddings: Tensor, protos: Tensor) -> Tensor:
    """Negative squared Euclidean distance of each embedding to each prototype."""
    return -(embeddings.unsqueeze(-2) - protos).pow(2).sum(-1)


class PrototypeClassifier(nn.Module):
    """An encoder plus fixed prototypes: a plain module that classifies new inputs."""

    def __init__(self, encoder: nn.Module, protos: Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("prototypes", protos)

    def forward(self, x: Tensor) -> Tensor:
        return prototype_logits(self.encoder(x).flatten(1), self.prototypes)


class ProtoNet(MetaAlgorithm):
    """ProtoNet on an embedding network: ``model.body`` when the model has one (the
    classification head is then unused), otherwise the model itself."""

    def __init__(
        self,
        model: nn.Module,
        *,
        strategy: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        encoder = getattr(model, "body", None)
        encoder = encoder if isinstance(encoder, nn.Module) else model
        super().__init__(encoder, strategy=strategy, chunk_size=chunk_size)

    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> dict[str, Tensor]:
        params = meta_parameters(self.model)
        buffers = functional_buffers(self.model)
        es = forward(self.model, params, support_x, buffers).flatten(1)
        eq = forward(self.model, params, query_x, buffers).flatten(1)
        logits = prototype_logits(eq, prototypes(es, support_y, self._ways))
        loss = F.cross_entropy(logits, query_y)
        return {"loss": loss, "query_loss": loss.detach(),
                "accuracy": accuracy(logits.detach(), query_y)}

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        *,
        classes: list[str] | None = None,
        **_: object,
    ) -> Learner:
        """Compute the prototypes of one support set."""
        encoder = export_module(self.model, {}, support_x)
        ways = int(support_y.max().item()) + 1
        with torch.no_grad():
            protos = prototypes(encoder(support_x).flatten(1), support_y, ways)
        return Learner(PrototypeClassifier(encoder, protos), classes)
