"""Algorithms: one registry, one constructor signature.

Every algorithm is built as ``create_algorithm(name, model, *, inner_lr, steps, eval_steps,
**options)``. The three common words mean the same thing everywhere: ``inner_lr`` is the
inner step size (a number; the initial value where it is learned), ``steps`` the inner
steps in meta-training, ``eval_steps`` the inner steps at test time and in ``adapt``
(default: ``steps``). ``None`` leaves the algorithm's default. An algorithm without an
inner loop (ProtoNet) refuses them, and any option an algorithm does not take is an error
that names it, so nothing a config says is dropped silently.

A new algorithm is one module whose class carries ``@register_algorithm(...)``, plus one
import line in :mod:`metavox.meta` so the decorator runs.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

#: The constructor arguments every algorithm shares with the registry's signature.
COMMON = ("inner_lr", "steps", "eval_steps")


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registered algorithm: its class, preset options, and what it is."""

    name: str
    cls: type
    description: str
    presets: dict[str, Any] = field(default_factory=dict)
    #: False for evaluation-only baselines (fine-tuning), which have no meta-gradient
    meta_trained: bool = True

    @property
    def trains_rejection(self) -> bool:
        """Whether the class trains rejection: its tasks' queries may hold unknowns
        (``accepts_unknowns``), and it takes a cohort of training clips."""
        return bool(getattr(self.cls, "accepts_unknowns", False))

    def options(self) -> list[str]:
        """Keyword options the class takes: its constructor's keyword-only parameters and,
        where it forwards ``**common`` to its base class, the base's, up the chain."""
        names: list[str] = []
        for klass in self.cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
            names += [p.name for p in params if p.kind is p.KEYWORD_ONLY]
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names


ALGORITHMS: dict[str, AlgorithmSpec] = {}


def register_algorithm(
    name: str,
    *,
    description: str,
    presets: dict[str, Any] | None = None,
    meta_trained: bool = True,
) -> Callable[[type], type]:
    """Class decorator: register ``cls`` under ``name`` (``presets`` are options fixed
    for this name, e.g. ``first_order=True`` for first-order MAML)."""

    def decorate(cls: type) -> type:
        if name in ALGORITHMS:
            raise ValueError(f"algorithm {name!r} is registered twice")
        ALGORITHMS[name] = AlgorithmSpec(name, cls, description, dict(presets or {}),
                                         meta_trained)
        return cls

    return decorate


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The registered algorithm ``name``; an unknown name is a ``ValueError`` with a hint."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        close = difflib.get_close_matches(name, ALGORITHMS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown algorithm {name!r}; registered: {sorted(ALGORITHMS)}{hint}"
                         ) from None


class UnknownOptionError(TypeError, ValueError):
    """An option the algorithm does not take (a ``TypeError`` like any bad keyword
    argument, a ``ValueError`` like an unknown name)."""


def create_algorithm(
    name: str,
    model: nn.Module,
    *,
    inner_lr: float | None = None,
    steps: int | None = None,
    eval_steps: int | None = None,
    **options: Any,
) -> nn.Module:
    """Build the registered algorithm ``name`` around ``model``.

    Options are checked before anything is built: an unknown one, one that contradicts
    the name's presets, or a common argument given to an algorithm without an inner loop
    raises :class:`UnknownOptionError` naming it and what is accepted.
    """
    spec = algorithm_spec(name)
    given = {k: v for k, v in zip(COMMON, (inner_lr, steps, eval_steps), strict=True)
             if v is not None}
    given.update(options)
    accepted = spec.options()
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise UnknownOptionError(
            f"algorithm {name!r} does not take {unknown}; it accepts: "
            f"{sorted(set(accepted) - set(spec.presets))}")
    clash = sorted(k for k in set(given) & set(spec.presets) if given[k] != spec.presets[k])
    if clash:
        raise UnknownOptionError(
            f"algorithm {name!r} fixes {', '.join(f'{k}={spec.presets[k]!r}' for k in clash)}; "
            f"use another algorithm name to change it")
    return spec.cls(model, **{**given, **spec.presets})


def list_algorithms() -> dict[str, str]:
    """Registered names mapped to one-line descriptions."""
    return {name: spec.description for name, spec in ALGORITHMS.items()}
