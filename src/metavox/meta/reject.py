"""Proto-MAML that learns to reject: an "unknown" score taken from the adapted task.

Every meta-learner before this one chooses among the enrolled words; trained on open-set
episodes (:class:`~metavox.data.episodes.OpenSetEpisodeSampler`: queries that hold words
never in the support, label ``-1``) this one also learns when to say *none of these*.

A task adapts as Proto-MAML does (a prototype-initialised head, inner steps on the
support only). Then each class ``c`` gets an *unknown logit* from the adapted task's own
numbers, with meta-learned coefficients (all zero at the start, so training starts from
the frozen metric's scores):

    u_c = a_t * t_c + a_o * o_c + a_z * z_c + b

- ``t_c``: the mean logit of class ``c``'s own support clips (how tight the word is);
- ``o_c``: the mean logit of class ``c`` on the *other* enrolled words' support clips
  (how high a word that is not ``c`` scores: a cohort from the task itself);
- ``z_c``: the mean of the ``cohort_top`` highest logits of class ``c`` over a fixed
  *cohort* of clips (words of the training set, stored with the algorithm; 0 without one);
  an estimate of where class ``c``'s non-target scores lie, as speaker verification's
  score normalisation takes it.

A clip's score for class ``c`` is ``logit_c - u_c``; it is accepted when the best class's
score reaches the threshold (0 is the learned boundary). Objectives (``objective``):

- ``"nplus1"``: an N+1-way cross-entropy over ``tau * [score_1 .. score_N, 0]``: an
  unknown query's label is the extra class, whose logit is 0 (so ``u_c`` *is* the learned
  unknown logit relative to class ``c``); ``tau`` is meta-learned;
- ``"margin"``: the known queries' N-way cross-entropy plus hinge losses on normalised
  scores: a target's own score above ``margin``, every unknown's best score below
  ``-margin`` (a metric loss on target against unknown scores).

The adapted module (:class:`RejectClassifier`) outputs the scores, the offsets ``u``
stored in it as a buffer: so saving, loading, the service and the ONNX export all give the
same accept/reject decisions without anything else travelling beside the weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metavox.meta.base import BY_STEP
from metavox.meta.functional import forward, functional_buffers, meta_parameters
from metavox.meta.inner import inner_loop
from metavox.meta.learner import register_learner_kind
from metavox.meta.maml import MAML
from metavox.meta.registry import register_algorithm

OBJECTIVES = ("nplus1", "margin")


def support_statistics(support_logits: Tensor, support_y: Tensor, ways: int
                       ) -> tuple[Tensor, Tensor]:
    """``(t [ways], o [ways])``: each class's mean logit over its own support clips, and
    over the other classes' support clips (its own mean when the task has one class).
    Written with masks, not indexing, so it runs under ``torch.vmap``."""
    own = F.one_hot(support_y, ways).to(support_logits.dtype)  # [S, ways]
    t = (own * support_logits).sum(0) / own.sum(0).clamp_min(1)
    other = 1.0 - own
    n_other = other.sum(0)
    o = (other * support_logits).sum(0) / n_other.clamp_min(1)
    return t, torch.where(n_other > 0, o, t)


def cohort_statistic(cohort_logits: Tensor, top: int) -> Tensor:
    """``[ways]``: the mean of each class's ``top`` highest logits over the cohort clips
    (``cohort_logits [M, ways]``)."""
    k = max(1, min(int(top), cohort_logits.shape[0]))
    return cohort_logits.topk(k, dim=0).values.mean(0)


def unknown_offsets(coef: Tensor, support_logits: Tensor, support_y: Tensor, ways: int,
                    cohort_logits: Tensor | None, top: int) -> Tensor:
    """``u [ways]``: each class's unknown logit ``a_t t + a_o o + a_z z + b`` with
    ``coef = [a_t, a_o, a_z, b]`` (see the module's docstring)."""
    t, o = support_statistics(support_logits, support_y, ways)
    z = (torch.zeros_like(t) if cohort_logits is None or cohort_logits.shape[0] == 0
         else cohort_statistic(cohort_logits, top))
    return coef[0] * t + coef[1] * o + coef[2] * z + coef[3]


def rejection_loss(scores: Tensor, query_y: Tensor, *, objective: str, tau: Tensor,
                   margin: float, logits: Tensor) -> Tensor:
    """The task's meta-loss from its query ``scores [Q, N]`` (logits minus the unknown
    offsets), labels ``query_y [Q]`` (``-1``: unknown) and raw ``logits [Q, N]``."""
    known = (query_y >= 0).to(scores.dtype)
    n_known = known.sum().clamp_min(1)
    n_unknown = (1.0 - known).sum().clamp_min(1)
    safe_y = query_y.clamp_min(0)
    ways = scores.shape[-1]
    if objective == "nplus1":
        full = tau * torch.cat([scores, torch.zeros_like(scores[:, :1])], -1)
        target = torch.where(query_y >= 0, safe_y, torch.full_like(safe_y, ways))
        return F.cross_entropy(full, target)
    if objective == "margin":
        ce = (F.cross_entropy(tau * logits, safe_y, reduction="none") * known).sum() / n_known
        own = scores.gather(-1, safe_y.unsqueeze(-1)).squeeze(-1)
        best = scores.max(-1).values
        hit = (F.relu(margin - own) * known).sum() / n_known
        reject = (F.relu(margin + best) * (1.0 - known)).sum() / n_unknown
        return ce + hit + reject
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


class RejectClassifier(nn.Module):
    """An adapted classifier whose outputs are class scores relative to the task's
    learned unknown logits: ``inner(x) - offsets``."""

    def __init__(self, inner: nn.Module, offsets: Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("offsets", offsets)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) - self.offsets


@register_learner_kind("reject", features=lambda module: module.inner.body)
def _reject_classifier(model: nn.Module, info: dict[str, Any]) -> nn.Module:
    """The structure of a rejecting learner: the model (adapted weights) and ``rows``
    offsets."""
    return RejectClassifier(model, torch.zeros(int(info["rows"])))


@register_algorithm("protoreject", description="Proto-MAML trained to reject: per-class "
                    "unknown logits from the adapted task (support and cohort scores), "
                    "N+1-way or margin loss on open-set episodes",
                    presets={"head_init": "prototypes"})
class ProtoReject(MAML):
    """Proto-MAML with a meta-learned rejection rule (see the module's docstring).

    Args:
        objective: ``"nplus1"`` or ``"margin"``.
        margin: the margin of ``"margin"`` (on ``tau``-scaled scores' scale: unscaled).
        temperature: the initial ``tau`` (learned), the inverse temperature of the losses.
        cohort_top: how many of the cohort's highest logits make ``z_c``.
        options: as :class:`~metavox.meta.maml.MAML` (``head_init`` is ``"prototypes"``;
            per-step BatchNorm and the multi-step loss are not supported).
    """

    learner_kind = "reject"
    #: its queries may hold unknowns (label -1): open-set episodes
    accepts_unknowns = True

    def __init__(self, model: nn.Module, *, objective: str = "nplus1", margin: float = 0.1,
                 temperature: float = 10.0, cohort_top: int = 10, **options: Any) -> None:
        super().__init__(model, **options)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if self.bn_names or self.multi_step_loss:
            raise ValueError("protoreject does not support per_step_bn or multi_step_loss")
        if not temperature > 0 or margin < 0 or cohort_top < 1:
            raise ValueError(f"need temperature > 0, margin >= 0, cohort_top >= 1; got "
                             f"{temperature}, {margin}, {cohort_top}")
        self.objective, self.margin, self.cohort_top = objective, float(margin), int(cohort_top)
        #: [a_t, a_o, a_z, b]: zero, so training starts from the frozen metric's scores
        self.reject_coef = nn.Parameter(torch.zeros(4))
        self.log_tau = nn.Parameter(torch.tensor(math.log(temperature)))
        #: the cohort clips' inputs ([M, ...], as the model takes them; empty: none)
        self.register_buffer("cohort_x", torch.zeros(0))
        self._register_load_state_dict_pre_hook(self._fit_cohort)

    def _fit_cohort(self, state_dict, prefix, *args) -> None:
        """Take a saved cohort of any size (the buffer starts empty)."""
        saved = state_dict.get(prefix + "cohort_x")
        if saved is not None and saved.shape != self.cohort_x.shape:
            self.cohort_x = torch.zeros_like(saved, device=self.cohort_x.device)

    def set_cohort(self, x: Tensor) -> None:
        """Store the cohort clips (``[M, ...]``, inputs as the model takes them)."""
        self.cohort_x = x.detach().float().to(self.cohort_x.device)

    def _cohort_logits(self, params, buffers, dtype) -> Tensor | None:
        if self.cohort_x.numel() == 0:
            return None
        return forward(self.model, params, self.cohort_x.to(dtype), buffers)

    def task_objective(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                       query_y: Tensor, settings) -> dict[str, Tensor]:
        ways = settings.ways
        buffers = functional_buffers(self.model)
        params = self._start(meta_parameters(self.model), support_x, support_y, ways, buffers)
        first_order = self.first_order or settings.iteration < self.first_order_iterations
        trajectory = inner_loop(self.model, params, support_x, support_y,
                                steps=settings.steps, lr=self._step_size(),
                                first_order=first_order, loss_fn=self.loss_fn,
                                adapt_names=self._adapt_names(), buffers=buffers,
                                checkpoint=self.inner_checkpoint)
        known = (query_y >= 0).to(support_x.dtype)
        safe_y = query_y.clamp_min(0)

        def scored(p) -> tuple[Tensor, Tensor]:
            """The query's raw logits and its scores (logits minus the unknown offsets)
            under parameters ``p``."""
            s_logits = forward(self.model, p, support_x, buffers)
            q_logits = forward(self.model, p, query_x, buffers)
            c_logits = self._cohort_logits(p, buffers, q_logits.dtype)
            u = unknown_offsets(self.reject_coef, s_logits, support_y, ways, c_logits,
                                self.cohort_top)
            return q_logits, q_logits - u

        def known_accuracy(p) -> Tensor:  # what the adapted module answers, known queries
            with torch.no_grad():
                right = scored(p)[1].argmax(-1) == safe_y
                return (right.to(known.dtype) * known).sum() / known.sum().clamp_min(1)

        curve = [known_accuracy(params)] if settings.record_steps else []
        fast = params
        for step in trajectory:
            if settings.record_steps and len(curve) < settings.steps:
                curve.append(known_accuracy(step))
            fast = step
        q_logits, scores = scored(fast)
        tau = self.log_tau.exp()
        loss = rejection_loss(scores, query_y, objective=self.objective, tau=tau,
                              margin=self.margin, logits=q_logits)
        known = known.to(scores.dtype)
        right = (scores.argmax(-1) == safe_y).to(scores.dtype)
        accepted = (scores.max(-1).values >= 0).to(scores.dtype)
        n_known, n_unknown = known.sum().clamp_min(1), (1 - known).sum().clamp_min(1)
        out = {"loss": loss, "query_loss": loss.detach(),
               # closed-set accuracy on the known queries
               "accuracy": ((right * known).sum() / n_known).detach(),
               "detection": ((right * accepted * known).sum() / n_known).detach(),
               "false_accept": ((accepted * (1 - known)).sum() / n_unknown).detach()}
        if self.track_before:
            out["accuracy_before"] = curve[0] if curve else known_accuracy(params)
        if settings.record_steps:  # closed-set accuracy after each inner step 0..steps
            out[BY_STEP] = torch.stack([*curve, out["accuracy"]])
        return out

    def adapted_module(self, support_x: Tensor, support_y: Tensor,
                       steps: int) -> tuple[nn.Module, dict[str, Any]]:
        """Proto-MAML's adapted copy, wrapped with this task's unknown offsets (padded
        rows of a head wider than the task get offset 0; their logits never win)."""
        module, _ = super().adapted_module(support_x, support_y, steps)
        ways = int(support_y.max()) + 1
        with torch.no_grad():
            s_logits = module(support_x)[:, :ways]
            c_logits = (None if self.cohort_x.numel() == 0
                        else module(self.cohort_x.to(s_logits.dtype))[:, :ways])
            u = unknown_offsets(self.reject_coef.detach(), s_logits, support_y, ways,
                                c_logits, self.cohort_top)
            rows = module(support_x[:1]).shape[-1]
            offsets = torch.cat([u, u.new_zeros(rows - ways)])
        return RejectClassifier(module, offsets), {"rows": int(rows)}
