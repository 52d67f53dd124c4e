"""The one shape every layer above the data speaks: a batch of few-shot episodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class EpisodeBatch:
    """A meta-batch of ``T`` tasks.

    ``support_x [T, N*K, ...]``, ``support_y [T, N*K]``, ``query_x [T, N*Q, ...]``,
    ``query_y [T, N*Q]``. Labels are re-numbered ``0..N-1`` inside each task;
    ``classes[t][i]`` names task ``t``'s label ``i`` and ``speakers[t]`` the speakers the
    task drew (both only for reports; empty when unknown).

    Open-set tasks (:class:`~metavox.data.episodes.OpenSetEpisodeSampler`) append to each
    query clips that are none of the task's classes (words never in its support,
    backgrounds), labelled ``-1``; ``unknown_words[t]`` names task ``t``'s unknown words
    (empty for closed-set batches). Only algorithms that train rejection accept them.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: list[list[str]] = field(default_factory=list)
    speakers: list[list[str]] = field(default_factory=list)
    unknown_words: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        t = self.support_x.shape[0]
        for name in ("support_y", "query_x", "query_y"):
            if getattr(self, name).shape[0] != t:
                raise ValueError(
                    f"EpisodeBatch.{name} has {getattr(self, name).shape[0]} tasks, "
                    f"support_x has {t}"
                )
        if self.support_x.shape[:2] != self.support_y.shape[:2]:
            raise ValueError(
                f"support_x {tuple(self.support_x.shape)} and support_y "
                f"{tuple(self.support_y.shape)} disagree on [tasks, examples]"
            )
        if self.query_x.shape[:2] != self.query_y.shape[:2]:
            raise ValueError(
                f"query_x {tuple(self.query_x.shape)} and query_y "
                f"{tuple(self.query_y.shape)} disagree on [tasks, examples]"
            )

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    @property
    def ways(self) -> int:
        """Number of classes per task (labels are 0..N-1)."""
        return int(self.support_y.max().item()) + 1

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> EpisodeBatch:
        """Move tensors to ``device``; cast the inputs (never the labels) to ``dtype``."""
        return EpisodeBatch(
            self.support_x.to(device=device, dtype=dtype),
            self.support_y.to(device),
            self.query_x.to(device=device, dtype=dtype),
            self.query_y.to(device),
            self.classes,
            self.speakers,
            self.unknown_words,
        )

    def task(self, t: int) -> EpisodeBatch:
        """Task ``t`` alone, as a batch of one."""
        sl = slice(t, t + 1)
        return EpisodeBatch(
            self.support_x[sl], self.support_y[sl], self.query_x[sl], self.query_y[sl],
            self.classes[sl], self.speakers[sl], self.unknown_words[sl],
        )

    @property
    def has_unknowns(self) -> bool:
        """Whether any query is labelled ``-1`` (an open-set batch)."""
        return not torch.is_floating_point(self.query_y) and bool((self.query_y < 0).any())
