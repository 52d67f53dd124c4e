"""Where and in what precision the engine runs: device names and autocast."""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("float32", "bfloat16")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a clear ``ValueError`` for a name that
    is not a device or a CUDA device this torch cannot see."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name (auto, cpu, cuda, cuda:N)"
                         ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this torch sees no CUDA GPU; "
                         "use 'cpu' or 'auto'")
    return device


def autocast(device: torch.device | str, precision: str = "float32"):
    """The context the meta-learners run in: ``torch.autocast`` to bfloat16 for
    ``precision="bfloat16"`` (matrix products and convolutions in bfloat16, losses and
    normalisation statistics in float32), nothing for ``"float32"``."""
    if precision == "float32":
        return contextlib.nullcontext()
    if precision != "bfloat16":
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
