"""Checkpoints: one safetensors file, tensors plus JSON metadata, written atomically.

No pickle anywhere: tensors (meta-parameters, optimiser moments, the torch RNG state) go
in the safetensors body, everything else (config, class names, front-end, scheduler and
optimiser scalars, NumPy RNG state, iteration) in its JSON header metadata. A checkpoint
is written to a temporary file in the same folder and renamed over the old one, so a crash
never leaves a broken checkpoint behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "metavox-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable metavox checkpoint; the message says why."""


@dataclass
class Checkpoint:
    """What a checkpoint holds, in memory."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors stored under ``prefix/`` with the prefix removed."""
        p = prefix + "/"
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, **ckpt.meta}
    # safetensors refuses shared or non-contiguous storage: store private contiguous copies
    tensors = {k: v.detach().contiguous().clone() for k, v in ckpt.tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"metavox": json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint; clear errors for missing, corrupt, foreign or newer files."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "latest.safetensors", "model.safetensors"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: folder holds no best/latest/model.safetensors")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({err})") from None
    try:
        meta = json.loads(header.get("metavox", ""))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: safetensors file without metavox metadata") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a metavox checkpoint (format {meta.get('format')!r})")
    if int(meta.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {meta['version']} is newer than this metavox "
            f"understands ({VERSION}); upgrade metavox"
        )
    return Checkpoint(tensors, meta)


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
