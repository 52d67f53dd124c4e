"""The shared path of metavox's ported encoders: pretrained networks that arrive as ONNX
files inside someone else's wheel and are rebuilt here from ordinary torch layers.

A port never runs the ONNX graph and never imports the package that ships it (importing
may pull in audio drivers or start work at import time): it finds the file through the
package's import spec (:func:`package_file`), reads the graph's initializers as tensors
(:func:`load_graph`), checks the graph against the structure the port reproduces, maps
the weights onto its own parameter names, and caches the result as safetensors keyed by
the source files' sha256 (:func:`cached_conversion`), so the conversion runs once per
machine and a changed file is converted again. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from metavox.storage import atomic_path, cache_root, save_file

__all__ = [
    "EmbeddingError",
    "package_file",
    "file_sha256",
    "conversion_key",
    "load_graph",
    "initializers",
    "node_attributes",
    "cached_conversion",
]


class EmbeddingError(RuntimeError):
    """The pretrained weights cannot be had or read, or the graph is not the one a port
    reproduces; the message says what to install or what differs."""


def package_file(package: str, relative: str | os.PathLike[str], install: str) -> Path:
    """The file ``relative`` inside the installed package ``package``, found without
    importing the package (only its import spec is looked up).

    ``install`` is the command that gets the package (``pip install ...``); a missing
    package or file is an :class:`EmbeddingError` that names it.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a parent package missing, or a broken entry
        spec = None
    if spec is None:
        raise EmbeddingError(f"the package `{package}` is not installed: {install}")
    folders = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:  # a plain module: its folder
        folders = [str(Path(spec.origin).parent)]
    for folder in folders:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise EmbeddingError(f"{relative} is missing from the installed `{package}` "
                         f"(looked in {', '.join(folders) or 'nowhere'}); reinstall it: {install}")


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The file's sha256 (hex), remembered per process while its size and mtime stand."""
    st = os.stat(path)
    return _sha256(os.fspath(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def conversion_key(files: Sequence[str | os.PathLike[str]]) -> str:
    """16 hex digits naming the converted weights of ``files``: the sha256 of their
    sha256s joined in order (so one changed file gives a new key)."""
    joined = "".join(file_sha256(f) for f in files)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def _onnx() -> tuple[Any, Any]:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise EmbeddingError("converting a pretrained model needs `onnx`: "
                             "pip install 'metavox[pretrained]' (or pip install onnx)") from None
    return onnx, numpy_helper


def load_graph(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Tensor]]:
    """The ONNX graph (``onnx.GraphProto``) of the file at ``path`` and its initializers as
    torch tensors by name (copies, so they own their memory)."""
    onnx, numpy_helper = _onnx()
    try:
        graph = onnx.load(os.fspath(path)).graph
    except Exception as err:  # a truncated or foreign file: onnx raises several kinds
        raise EmbeddingError(f"{path}: cannot be read as an ONNX model ({err})") from None
    return graph, initializers(graph)


def initializers(graph: Any) -> dict[str, Tensor]:
    """The initializers of an ``onnx.GraphProto`` as torch tensors by name."""
    _, numpy_helper = _onnx()
    return {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}


def node_attributes(node: Any) -> dict[str, Any]:
    """An ONNX node's attributes as Python values (ints, floats, lists, tensors)."""
    onnx, _ = _onnx()
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def cached_conversion(name: str, files: Sequence[str | os.PathLike[str]],
                      convert: Callable[[], dict[str, Tensor]], *,
                      cache: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """The state dict converted from ``files``: read from
    ``<cache_root()>/<name>/<key>.safetensors`` (``<cache>/<key>.safetensors`` when
    ``cache`` is given; ``key`` from :func:`conversion_key`), or made by ``convert()``,
    written there atomically, and returned.

    A cache file that cannot be read (truncated by a full disk, say) is converted again
    and replaced.
    """
    folder = Path(cache) if cache is not None else cache_root() / name
    path = folder / f"{conversion_key(files)}.safetensors"
    state = _read(path) if path.is_file() else None
    if state is not None:
        return state
    state = convert()
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    return state


def _read(path: Path) -> dict[str, Tensor] | None:
    """A cached state dict, or None where the file cannot be read as safetensors."""
    try:
        return load_file(str(path))
    except Exception:  # safetensors raises its own error kinds on a damaged file
        return None
