"""Files metavox writes: atomic writes, and the tensors-plus-JSON container.

**Atomic writes.** Every file someone may read back (checkpoints, learners, splits,
manifests, reports, audio) is written beside its target under a hidden temporary name and
renamed over it, so a reader, or a process restarted after a crash, sees the old file or
the complete new one, never a half-written file.

**The container.** No pickle anywhere: a :class:`Checkpoint` is one safetensors file whose
body holds the tensors and whose header holds JSON metadata (config, class names,
front-end, optimiser scalars, ...). Training checkpoints (:mod:`metavox.engine.checkpoint`)
and adapted learners (:class:`metavox.meta.Learner`) both use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from metavox import __version__


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` (``.NAME.XXXX.tmp``); when the block
    ends normally it is given ``mode`` and renamed onto ``path``, otherwise removed.

    The folder is created if missing. Keeping the target's extension out of the temporary
    name's end means corpus scans that skip hidden files never pick it up.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp makes 0600; data files should be readable
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class FolderInUseError(ValueError):
    """Another process holds the folder's lock; the message names its pid."""


@contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``folder/.lock`` exclusively for the block (``fcntl.flock``, so the lock goes
    with the process, also when it is killed). A second holder gets :class:`FolderInUseError`
    at once, naming the first one's pid. Where ``fcntl`` is missing (Windows) it does
    nothing."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise FolderInUseError(f"{folder} is in use by another metavox process (pid {holder}): "
                              "wait for it to finish, or write to another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def waiting_lock(path: str | os.PathLike[str], on_wait: Callable[[], None] | None = None
                 ) -> Iterator[Path]:
    """Hold the lock file ``path`` exclusively for the block, first waiting for any other
    holder to finish (``on_wait`` is called once if it has to). ``fcntl.flock``, so a
    killed holder releases it; the file is removed on release. Where ``fcntl`` is missing it
    does nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield path
        return
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None and not waited:
                on_wait()
            waited = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # the holder before may have removed the file: then lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding it: a waiter then retries
        os.close(fd)


def cache_root() -> Path:
    """metavox's cache folder: ``$METAVOX_CACHE`` if set, else ``$XDG_CACHE_HOME`` or
    ``~/.cache``, plus ``metavox`` (features, converted weights, the synthetic corpus)."""
    env = os.environ.get("METAVOX_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "metavox"


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, with no newline translation) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8", newline="")
        else:
            tmp.write_bytes(data)
    return Path(path)


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


def save_file(tensors: dict[str, torch.Tensor], filename: str | os.PathLike[str],
              metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file, straight to ``filename``.

    ``safetensors.torch.save_file`` writes through a temporary file of its own
    (``.tmpXXXXXX`` beside the target) that a killed process leaves behind; here the only
    temporary file is :func:`atomic_path`'s, which the next run into the folder removes.
    """
    Path(filename).write_bytes(save(tensors, metadata=metadata))


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically (see :func:`atomic_path`)."""
    path = Path(path)
    meta = {"format": FORMAT, "version": VERSION, "metavox_version": __version__, **ckpt.meta}
    # safetensors refuses shared or non-contiguous storage: store private contiguous copies
    tensors = {k: v.detach().contiguous().clone() for k, v in ckpt.tensors.items()}
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"metavox": json.dumps(meta)})
    except OSError as err:  # a full disk, a vanished folder: say which file, and that
        raise OSError(err.errno, f"could not write {path} ({err.strerror or err}); the "
                      "previous file there, if any, is intact") from err
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
            runs = sorted(str(d) for d in path.iterdir() if d.is_dir() and any(
                (d / n).is_file() for n in ("best.safetensors", "latest.safetensors",
                                             "model.safetensors")))
            hint = f"; the run is in {' or '.join(runs)}" if runs else ""
            raise CheckpointError(
                f"{path}: folder holds no best/latest/model.safetensors{hint}")
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        kind = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path}: not a metavox checkpoint (format {kind!r})")
    check_version(path, meta)
    return Checkpoint(tensors, meta)


def check_version(path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Refuse a checkpoint in a format version this metavox does not read, naming both
    versions (and the metavox that wrote it). Files from another metavox release in the
    same format version load: the format version changes when the layout does."""
    version = meta.get("version")
    if type(version) is int and version == VERSION:
        return
    by = meta.get("metavox_version")
    found = f"checkpoint format version {version!r}" + (f" (written by metavox {by})" if by
                                                        else "")
    ours = f"this metavox ({__version__}) reads format version {VERSION}"
    if type(version) is int and version > VERSION:
        raise CheckpointError(f"{path}: {found}; {ours}: upgrade metavox")
    raise CheckpointError(f"{path}: {found}; {ours} only: re-create the file with this "
                          "metavox, or use the one that wrote it")
