"""Optimiser state in a checkpoint: tensors in the safetensors body, the rest as JSON.

The container itself (atomic safetensors + JSON, no pickle) is :mod:`metavox.storage`.
"""

from __future__ import annotations

from typing import Any

import torch


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state split into tensors and JSON-ready data."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        plain_state[str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
                plain_state[str(pid)][k] = {"__tensor__": f"{pid}.{k}"}
            else:
                plain_state[str(pid)][k] = v
    return tensors, {"state": plain_state, "param_groups": sd["param_groups"]}


def restore_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], plain: dict
) -> None:
    """Inverse of :func:`optimizer_state`."""
    state = {}
    for pid, st in plain["state"].items():
        state[int(pid)] = {
            k: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v
            for k, v in st.items()
        }
    opt.load_state_dict({"state": state, "param_groups": plain["param_groups"]})
