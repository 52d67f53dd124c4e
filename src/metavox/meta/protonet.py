"""Prototypical networks (Snell et al. 2017), the metric-learning baseline.

Each class's prototype is the mean embedding of its support examples; a query's logits are
its negative squared Euclidean distances to the prototypes. No inner loop: adaptation is
computing the prototypes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metavox.meta.base import MetaAlgorithm, StepRecorder, TaskSettings
from metavox.meta.functional import forward, functional_buffers, meta_parameters
from metavox.meta.learner import export_module, register_learner_kind
from metavox.meta.registry import register_algorithm


def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Mean embedding per class: ``[ways, dim]``."""
    one_hot = F.one_hot(labels, ways).to(embeddings.dtype)
    return one_hot.t() @ embeddings / one_hot.sum(0).clamp_min(1).unsqueeze(1)


def prototype_logits(embeddings: Tensor, protos: Tensor) -> Tensor:
    """Negative squared Euclidean distance of each embedding to each prototype."""
    return -(embeddings.unsqueeze(-2) - protos).pow(2).sum(-1)


def prototype_head(embeddings: Tensor, labels: Tensor, ways: int) -> tuple[Tensor, Tensor]:
    """Weight ``[ways, dim]`` and bias ``[ways]`` of the linear head that scores like
    ProtoNet's squared-distance rule on these support embeddings: ``-|f - c|^2`` equals
    ``2 c.f - |c|^2`` up to a term that does not depend on the class (Proto-MAML,
    Triantafillou et al. 2020)."""
    protos = prototypes(embeddings, labels, ways)
    return 2.0 * protos, -protos.pow(2).sum(-1)


def embedding_network(model: nn.Module) -> nn.Module:
    """The network ProtoNet embeds with: ``model.body`` when the model has one (the
    classification head is then unused), otherwise the model itself."""
    body = getattr(model, "body", None)
    return body if isinstance(body, nn.Module) else model


class PrototypeClassifier(nn.Module):
    """An encoder plus fixed prototypes: a plain module that classifies new inputs."""

    def __init__(self, encoder: nn.Module, protos: Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("prototypes", protos)

    def forward(self, x: Tensor) -> Tensor:
        return prototype_logits(self.encoder(x).flatten(1), self.prototypes)


@register_learner_kind("prototypes", features=lambda module: module.encoder)
def _prototype_classifier(model: nn.Module, info: dict[str, Any]) -> nn.Module:
    """The structure of a ProtoNet learner: ``info`` gives ``ways`` and ``dim``."""
    return PrototypeClassifier(embedding_network(model),
                               torch.zeros(int(info["ways"]), int(info["dim"])))


@register_algorithm("protonet", description="ProtoNet (Snell et al. 2017): nearest class "
                    "mean in a meta-learned embedding; no inner loop")
class ProtoNet(MetaAlgorithm):
    """ProtoNet on the model's embedding network (see :func:`embedding_network`).

    It has no inner loop, so it takes no ``inner_lr``, ``steps`` or ``eval_steps``;
    ``common``: see :class:`~metavox.meta.base.MetaAlgorithm`.
    """

    fixed_ways = False

    learner_kind = "prototypes"

    def __init__(self, model: nn.Module, **common: Any) -> None:
        super().__init__(embedding_network(model), **common)

    def task_objective(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
        settings: TaskSettings,
    ) -> dict[str, Tensor]:
        params = meta_parameters(self.model)
        buffers = functional_buffers(self.model)
        es = forward(self.model, params, support_x, buffers).flatten(1)
        eq = forward(self.model, params, query_x, buffers).flatten(1)
        logits = prototype_logits(eq, prototypes(es, support_y, settings.ways))
        loss = self.loss_fn(logits, query_y)
        return StepRecorder(settings, None, query_y).finish({}, objective=loss, query_loss=loss,
                                                            logits=logits)

    def adapted_module(self, support_x: Tensor, support_y: Tensor,
                       steps: int) -> tuple[nn.Module, dict[str, Any]]:
        """The encoder with the prototypes of one support set (``steps`` does not apply)."""
        encoder = export_module(self.model, {}, support_x)
        ways = int(support_y.max().item()) + 1
        with torch.no_grad():
            protos = prototypes(encoder(support_x).flatten(1), support_y, ways)
        return PrototypeClassifier(encoder, protos), {"ways": ways, "dim": int(protos.shape[1])}
