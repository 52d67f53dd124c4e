"""Features computed once per (corpus, front-end), kept as a memory-mapped ``.npy``.

A cache entry is a folder ``{cache_dir}/{corpus}-{key}/`` holding ``features.npy``
(``[clips, features, frames]``, float32 or float16) and ``index.json`` (the utterances in
row order, the front-end config, the corpus fingerprint, the clips that failed to decode).
``key`` hashes the front-end config, the dtype and the corpus fingerprint, so a change to
either gives a new entry. Entries are built in a temporary folder and renamed into place,
so an interrupted build is never mistaken for a complete one; two processes that need the
same entry at once take turns on a lock file beside it (``.{corpus}-{key}.lock``): one
builds, the other waits and opens what it built. The cache never lives inside the
(read-only) data folder.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from metavox.audio import io as audio_io
from metavox.audio.features import FrontendConfig, build_frontend
from metavox.data.corpus import Corpus, Utterance
from metavox.progress import Progress
from metavox.storage import atomic_path, atomic_write, cache_root, waiting_lock

_FORMAT = "metavox-features"
_VERSION = 1
_CROP = "center"
_CHUNK = 32  # clips per chunk file: the unit of work, resumption and sharding
_STALE_TMP_S = 24 * 3600
_LISTED = 50  # undecodable clips a build names one by one (the index lists them all)

DType = Literal["float32", "float16"]
OnError = Literal["skip", "raise"]


def default_cache_dir() -> Path:
    """``$METAVOX_CACHE/features`` if set, else ``$XDG_CACHE_HOME`` or ``~/.cache`` +
    ``/metavox/features``."""
    return cache_root() / "features"


class _Rows:
    """Row-subset view of a memmap: ``rows[i]`` is a memmap view of one clip."""

    def __init__(self, data: np.ndarray, rows: np.ndarray) -> None:
        self._data = data
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: Any) -> np.ndarray:
        return self._data[self._rows[i]]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._rows), *self._data.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype


class FeatureStore:
    """Cached features of a corpus: ``features[i]`` (a memmap view, ``[F, frames]``),
    with per-clip ``labels`` and ``speakers`` aligned to the rows, and lookups by either.

    A store made by :meth:`filter` shares the file and maps its rows onto a subset.
    It pickles by path (DataLoader workers reopen the memmap, never copy it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        rows: np.ndarray | None = None,
        *,
        index: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        if index is None:
            with open(self.path / "index.json", encoding="utf-8") as fh:
                index = json.load(fh)
        self.index: dict[str, Any] = index
        self._rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self._open()

    def _open(self) -> None:
        self._data = np.load(self.path / "features.npy", mmap_mode="r")
        root = self.index["corpus"]["root"]
        utts = [
            Utterance(os.path.normpath(os.path.join(root, rel)), label, speaker)
            for rel, label, speaker in self.index["utterances"]
        ]
        if self._rows is not None:
            utts = [utts[r] for r in self._rows]
        self.utterances: tuple[Utterance, ...] = tuple(utts)
        self.labels: tuple[str, ...] = tuple(u.label for u in utts)
        self.speakers: tuple[str | None, ...] = tuple(u.speaker for u in utts)
        self.label_names: list[str] = sorted(set(self.labels))
        self.speaker_names: list[str] = sorted({s for s in self.speakers if s is not None})
        lab_pos = {name: i for i, name in enumerate(self.label_names)}
        spk_pos = {name: i for i, name in enumerate(self.speaker_names)}
        #: int label id per row (index into ``label_names``)
        self.label_ids = np.array([lab_pos[x] for x in self.labels], dtype=np.int64)
        #: int speaker id per row (index into ``speaker_names``; -1 = unknown)
        self.speaker_ids = np.array(
            [-1 if s is None else spk_pos[s] for s in self.speakers], dtype=np.int64
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "index": self.index, "rows": self._rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.index, self._rows = state["path"], state["index"], state["rows"]
        self._open()

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"FeatureStore({len(self)} clips, {len(self.label_names)} labels, "
                f"{len(self.speaker_names)} speakers, shape {self.shape}, {self.path})")

    @property
    def features(self) -> np.ndarray | _Rows:
        """The rows, memory-mapped: ``features[i]`` is ``[F, frames]``."""
        return self._data if self._rows is None else _Rows(self._data, self._rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.features[i]

    @property
    def shape(self) -> tuple[int, ...]:
        """``(clips, features, frames)``."""
        return (len(self), *self._data.shape[1:])

    @property
    def config(self) -> FrontendConfig:
        """The front-end config the features were computed with."""
        return FrontendConfig.from_dict(self.index["frontend"])

    @property
    def failures(self) -> list[dict[str, str]]:
        """Clips that could not be decoded at build time (``path``, ``reason``)."""
        return list(self.index.get("failures", []))

    def fingerprint(self) -> str:
        """Fingerprint of the corpus the store was built from (see ``Corpus.fingerprint``)."""
        return str(self.index["corpus"]["fingerprint"])

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows ``indices`` gathered into a new float32 array ``[n, F, frames]``."""
        idx = np.asarray(indices, dtype=np.int64)
        if self._rows is not None:
            idx = self._rows[idx]
        return np.asarray(self._data[idx], dtype=np.float32)

    def indices(self, label: str | None = None, speaker: str | None = None) -> np.ndarray:
        """Row indices with that label and/or speaker (sorted)."""
        mask = np.ones(len(self), dtype=bool)
        if label is not None:
            mask &= np.asarray([x == label for x in self.labels])
        if speaker is not None:
            mask &= np.asarray([s == speaker for s in self.speakers])
        return np.flatnonzero(mask)

    def by_label(self) -> dict[str, np.ndarray]:
        """Row indices per label (labels sorted)."""
        return {name: np.flatnonzero(self.label_ids == i)
                for i, name in enumerate(self.label_names)}

    def by_speaker(self) -> dict[str, np.ndarray]:
        """Row indices per known speaker (speakers sorted)."""
        return {name: np.flatnonzero(self.speaker_ids == i)
                for i, name in enumerate(self.speaker_names)}

    def filter(
        self, labels: Iterable[str] | None = None, speakers: Iterable[str] | None = None
    ) -> FeatureStore:
        """A view of the rows whose label is in ``labels`` and speaker in ``speakers``."""
        lab = None if labels is None else set(labels)
        spk = None if speakers is None else set(speakers)
        keep = [
            i for i, (x, s) in enumerate(zip(self.labels, self.speakers, strict=True))
            if (lab is None or x in lab) and (spk is None or s in spk)
        ]
        base = np.asarray(keep, dtype=np.int64)
        rows = base if self._rows is None else self._rows[base]
        return FeatureStore(self.path, rows, index=self.index)


def write_feature_store(
    folder: str | os.PathLike[str],
    features: np.ndarray,
    labels: Sequence[str],
    groups: Sequence[str | None],
    *,
    names: Sequence[str] | None = None,
    source: str = "arrays",
) -> FeatureStore:
    """A :class:`FeatureStore` over examples that are not audio clips (images, vectors
    computed elsewhere): ``features[i]`` (any fixed shape) with its class ``labels[i]`` and
    its group ``groups[i]`` (the "speaker" of the samplers: who drew it, recorded it, ...).
    The episode samplers, training loop and evaluation then work on it as on speech. Written
    to ``folder`` (``features.npy`` and ``index.json``, each replaced whole)."""
    folder = Path(folder)
    features = np.asarray(features)
    n = len(features)
    if not (len(labels) == len(groups) == n) or (names is not None and len(names) != n):
        raise ValueError(f"need one label, group (and name) per example: {n} examples, "
                         f"{len(labels)} labels, {len(groups)} groups")
    names = [str(i) for i in range(n)] if names is None else list(names)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "features.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, features)
    digest = hashlib.sha256(features.tobytes()).hexdigest()[:16]
    index = {
        "format": _FORMAT, "version": _VERSION, "key": digest, "frontend": None,
        "dtype": str(features.dtype), "crop": None, "shape": list(features.shape),
        "corpus": {"name": source, "root": str(folder), "source": source,
                   "fingerprint": digest, "clips": n},
        "utterances": [[name, str(label), group] for name, label, group
                       in zip(names, labels, groups, strict=True)],
        "failures": [], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write(folder / "index.json", json.dumps(index))
    return FeatureStore(folder)


# ----------------------------------------------------------------------------- building


def _decode(path: str, cfg: FrontendConfig) -> tuple[np.ndarray | None, str]:
    """One clip, fitted to the front-end's duration: ``(wave, "")`` or ``(None, reason)``."""
    try:
        wave = audio_io.load_clip(path, cfg.sample_rate, cfg.duration, trim=cfg.trim,
                                  crop=_CROP)
    except audio_io.AudioError as exc:
        return None, exc.problem if hasattr(exc, "problem") else str(exc)
    return np.asarray(wave, dtype=np.float32), ""


class _Featurizer:
    """Turns one chunk of a corpus into a chunk file: decode its clips, run the front-end
    on them as one batch, write ``chunk-<j>.safetensors`` atomically (the features of the
    clips that decoded, and which clips those were and why the others failed). A chunk's
    content depends only on its clips, never on which process or how many ran it."""

    def __init__(self, config: dict[str, Any], dtype: str, folder: str,
                 paths: Sequence[str], threads: int | None) -> None:
        self.config = FrontendConfig.from_dict(config)
        self.dtype, self.folder, self.paths = dtype, Path(folder), paths
        if threads is not None:
            torch.set_num_threads(threads)
        self.frontend = build_frontend(self.config).eval()

    def __call__(self, chunk: int) -> tuple[int, int]:
        """Featurize chunk ``chunk``; returns ``(chunk, clips in it)``."""
        lo, hi = chunk * _CHUNK, min(len(self.paths), (chunk + 1) * _CHUNK)
        kept, waves, failures = [], [], []
        for i in range(lo, hi):
            wave, reason = _decode(self.paths[i], self.config)
            if wave is None:
                failures.append([i, reason])
            else:
                kept.append(i)
                waves.append(wave)
        shape = (self.config.num_features, self.config.num_frames)
        if waves:
            with torch.inference_mode():
                feats = self.frontend(torch.from_numpy(np.stack(waves)))
            if tuple(feats.shape[1:]) != shape:
                raise RuntimeError(f"front-end gave {tuple(feats.shape[1:])}, expected {shape}")
            feats = feats.to(getattr(torch, self.dtype)).contiguous()
        else:
            feats = torch.zeros(0, *shape, dtype=getattr(torch, self.dtype))
        meta = {"kept": json.dumps(kept), "failures": json.dumps(failures)}
        with atomic_path(_chunk_path(self.folder, chunk)) as tmp:
            save_file({"features": feats}, str(tmp), metadata=meta)
        return chunk, hi - lo


_worker: _Featurizer | None = None


def _init_worker(*args: Any) -> None:
    global _worker
    _worker = _Featurizer(*args)


def _run_worker(chunk: int) -> tuple[int, int]:
    assert _worker is not None
    return _worker(chunk)


def _num_chunks(clips: int) -> int:
    return -(-clips // _CHUNK)


def _chunk_path(folder: Path, chunk: int) -> Path:
    return folder / f"chunk-{chunk:07d}.safetensors"


def _read_chunk(path: Path) -> tuple[np.ndarray, list[int], list[list[Any]]]:
    with safe_open(str(path), framework="np") as fh:
        meta = fh.metadata()
        feats = fh.get_tensor("features")
    return feats, json.loads(meta["kept"]), json.loads(meta["failures"])


def _pool_context() -> mp.context.BaseContext:
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "corpus"


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _rank() -> tuple[int, int, int]:
    """``(rank, world, processes on this node)`` as ``torchrun`` sets them (``(0, 1, 1)``
    outside it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 1
    return (int(os.environ.get("RANK", "0")), world,
            int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


class FeatureCache:
    """Feature stores for one front-end config under ``cache_dir``.

    ``get(corpus)`` opens the entry for ``corpus`` if it is complete and builds it
    otherwise; later calls never decode audio.

    Building runs in ``workers`` processes (default: one per usable core; 0: in this
    process), each with one torch thread, over chunks of 32 clips: each chunk is decoded,
    featurized as one batch and written to its own file in a hidden folder beside the
    entry, atomically, so a killed build resumes from the chunks it finished. When every
    chunk is there they are joined into the entry, which appears by one rename: a reader
    sees a complete entry or none. The result does not depend on the number of workers.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank featurizes its share of the chunks
    (chunk ``j`` goes to rank ``j % world``; ``workers`` defaults to the cores divided by
    the ranks on the node) into the same cache folder, which must then be shared by all
    the machines; the first rank to see every chunk joins them, the others open the entry.

    A clip that fails to decode is skipped and listed (``on_error="skip"``) or raises
    (``"raise"``). ``progress``: a bar on a terminal, plain lines in a log.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        frontend_config: FrontendConfig | None = None,
        *,
        dtype: DType = "float32",
        workers: int | None = None,
        on_error: OnError = "skip",
        progress: bool = False,
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if workers is not None and workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.config = frontend_config if frontend_config is not None else FrontendConfig()
        self.dtype = dtype
        self.workers = workers
        self.on_error = on_error
        self.progress = progress

    def key(self, corpus: Corpus, fingerprint: str | None = None) -> str:
        """Hex hash of (format, front-end config, dtype, crop, corpus fingerprint)."""
        blob = json.dumps(
            {
                "format": [_FORMAT, _VERSION],
                "frontend": self.config.to_dict(),
                "dtype": self.dtype,
                "crop": _CROP,
                "corpus": fingerprint or corpus.fingerprint(),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def path(self, corpus: Corpus, fingerprint: str | None = None) -> Path:
        """The entry folder for ``corpus`` (it may not exist yet)."""
        key = self.key(corpus, fingerprint)
        return self.cache_dir / f"{_safe_name(corpus.name)}-{key[:20]}"

    def load(self, corpus: Corpus) -> FeatureStore | None:
        """The complete entry for ``corpus``, or ``None`` (nothing is decoded)."""
        fp = corpus.fingerprint()
        return self._open_valid(self.path(corpus, fp), self.key(corpus, fp))

    def get(self, corpus: Corpus, *, rebuild: bool = False) -> FeatureStore:
        """Open the entry for ``corpus``, building it first if missing or incomplete."""
        fp = corpus.fingerprint()
        key = self.key(corpus, fp)
        target = self.path(corpus, fp)
        if not rebuild:
            store = self._open_valid(target, key)
            if store is not None:
                self._remove_chunks(target)
                return store
        if not len(corpus):
            raise ValueError(f"corpus {corpus.name!r} is empty: nothing to cache")
        self._check_location(corpus)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._clean_stale()
        parts = self._chunks_folder(target)
        rank, world, local = _rank()

        def waiting() -> None:
            if self.progress:
                print(f"waiting for another process building {target}", file=sys.stderr)

        lock = self.cache_dir / f".{target.name}.lock"
        if world > 1:  # the ranks featurize side by side; one of them joins the chunks
            self._featurize(corpus, parts, rank, world, local, rebuild=rebuild)
            self._wait_for_chunks(corpus, parts)
            with waiting_lock(lock):
                store = self._open_valid(target, key, warn=False)
                # built before, or (a rebuild) joined just now by another rank
                if store is not None and (not rebuild or not parts.is_dir()):
                    return store
                return self._join(corpus, fp, key, target, parts)
        # one builder per entry: a second process waits, then opens what the first built
        with waiting_lock(lock, on_wait=waiting):
            if not rebuild:
                store = self._open_valid(target, key, warn=False)
                if store is not None:
                    return store
            self._featurize(corpus, parts, 0, 1, 1, rebuild=rebuild)
            return self._join(corpus, fp, key, target, parts)

    def _chunks_folder(self, target: Path) -> Path:
        return self.cache_dir / f".chunks-{target.name}-{_CHUNK}"

    def _remove_chunks(self, target: Path) -> None:
        """Remove the chunk files of a complete entry, left by a build killed between
        renaming the entry into place and removing them (under the entry's lock, which
        the join holds while it removes them itself)."""
        parts = self._chunks_folder(target)
        if parts.is_dir():
            with waiting_lock(self.cache_dir / f".{target.name}.lock"):
                shutil.rmtree(parts, ignore_errors=True)

    def _open_valid(self, target: Path, key: str, *, warn: bool = True) -> FeatureStore | None:
        if not target.is_dir():
            return None
        try:
            with open(target / "index.json", encoding="utf-8") as fh:
                index = json.load(fh)
            ok = index.get("format") == _FORMAT and index.get("key") == key
            if ok:
                arr = np.load(target / "features.npy", mmap_mode="r")
                ok = list(arr.shape) == index["shape"] and str(arr.dtype) == index["dtype"]
            if ok:
                return FeatureStore(target)
        except (OSError, ValueError, KeyError) as exc:
            if warn:
                warnings.warn(f"feature cache entry {target} is unreadable ({exc}); "
                              "rebuilding", stacklevel=3)
            return None
        if warn:
            warnings.warn(f"feature cache entry {target} is incomplete; rebuilding",
                          stacklevel=3)
        return None

    def _check_location(self, corpus: Corpus) -> None:
        cache = self.cache_dir.resolve()
        root = Path(corpus.root).resolve()
        if cache == root or root in cache.parents:
            raise ValueError(
                f"feature cache {cache} is inside the data folder {root}; data folders are "
                "read-only: pick another cache_dir (or set $METAVOX_CACHE)"
            )

    def _clean_stale(self) -> None:
        now = time.time()
        for entry in [*self.cache_dir.glob(".tmp-*"), *self.cache_dir.glob(".chunks-*")]:
            try:
                if now - entry.stat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                pass

    def _featurize(self, corpus: Corpus, parts: Path, rank: int, world: int, local: int, *,
                   rebuild: bool) -> None:
        """Write every missing chunk of this rank's share into ``parts`` (``local``: the
        ranks on this node, which share its cores)."""
        if rebuild and world == 1:
            shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True, exist_ok=True)
        n = len(corpus)
        chunks = range(rank, _num_chunks(n), world)
        todo = [j for j in chunks if not _chunk_path(parts, j).is_file()]
        sizes = {j: min(n, (j + 1) * _CHUNK) - j * _CHUNK for j in chunks}
        done = sum(sizes.values()) - sum(sizes[j] for j in todo)
        workers = self.workers
        if workers is None:
            workers = max(1, _usable_cpus() // local) if len(todo) > 1 else 0
        workers = min(workers, len(todo))
        args = (self.config.to_dict(), self.dtype, str(parts), [u.path for u in corpus])
        desc = f"features {corpus.name}" + (f" (rank {rank} of {world})" if world > 1 else "")
        with Progress(sum(sizes.values()), desc, "clip", enabled=self.progress,
                      initial=done) as bar:
            if not todo:
                return
            if workers <= 1:
                featurizer = _Featurizer(*args, threads=None if workers == 0 else 1)
                results: Iterable[tuple[int, int]] = map(featurizer, todo)
                self._collect(results, bar)
                return
            with ProcessPoolExecutor(workers, mp_context=_pool_context(),
                                     initializer=_init_worker, initargs=(*args, 1)) as pool:
                futures = [pool.submit(_run_worker, j) for j in todo]
                try:
                    self._collect((f.result() for f in as_completed(futures)), bar)
                except BrokenProcessPool:
                    raise RuntimeError(
                        f"a featurization worker died (out of memory, or killed) while "
                        f"building the features of {corpus.name!r}; the chunks finished so "
                        "far are kept: run again to resume") from None
                finally:
                    for f in futures:
                        f.cancel()

    def _collect(self, results: Iterable[tuple[int, int]], bar: Progress) -> None:
        for _, count in results:
            bar.update(count)

    def _wait_for_chunks(self, corpus: Corpus, parts: Path) -> None:
        """Under torchrun: wait until the other ranks' chunks are all in ``parts`` (or
        another rank has already joined them and removed the folder)."""
        total = _num_chunks(len(corpus))
        last = time.monotonic()
        while parts.is_dir():
            have = sum(1 for j in range(total) if _chunk_path(parts, j).is_file())
            if have == total:
                return
            if self.progress and time.monotonic() - last > 30:
                print(f"waiting for the other ranks' features: {have}/{total} chunks in "
                      f"{parts}", file=sys.stderr)
                last = time.monotonic()
            time.sleep(0.5)

    def _join(self, corpus: Corpus, fp: str, key: str, target: Path, parts: Path
              ) -> FeatureStore:
        """Join the chunk files into the entry (in a temporary folder, renamed into
        place), then remove them."""
        cfg = self.config
        n = len(corpus)
        for stale in self.cache_dir.glob(f".tmp-{target.name}-*"):  # a killed join's
            shutil.rmtree(stale, ignore_errors=True)
        chunks = [_read_chunk(_chunk_path(parts, j)) for j in range(_num_chunks(n))]
        kept = [i for _, k, _ in chunks for i in k]
        failures = [{"path": corpus.relpath(corpus[i]), "reason": reason}
                    for _, _, f in chunks for i, reason in f]
        if failures and self.on_error == "raise":
            bad = failures[0]
            raise audio_io.AudioError(os.path.join(corpus.root, bad["path"]), bad["reason"])
        if not kept:
            raise ValueError(f"none of the {n} clips of {corpus.name!r} could be decoded "
                             f"(first failure: {failures[0]['path']}: {failures[0]['reason']})")
        shape = (len(kept), cfg.num_features, cfg.num_frames)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=self.cache_dir))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a shared cache should be readable
        try:
            out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+",
                                            dtype=self.dtype, shape=shape)
            row = 0
            for feats, _, _ in chunks:
                out[row: row + len(feats)] = feats
                row += len(feats)
            out.flush()
            del out
            index = {
                "format": _FORMAT,
                "version": _VERSION,
                "key": key,
                "frontend": cfg.to_dict(),
                "dtype": self.dtype,
                "crop": _CROP,
                "shape": list(shape),
                "corpus": {"name": corpus.name, "root": corpus.root, "source": corpus.source,
                           "fingerprint": fp, "clips": n},
                "utterances": [[corpus.relpath(corpus[i]), corpus[i].label, corpus[i].speaker]
                               for i in kept],
                "failures": failures,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            with open(tmp / "index.json", "w", encoding="utf-8") as fh:
                # ASCII escapes keep file names that are not valid UTF-8 (surrogates)
                json.dump(index, fh)
            old = None
            if target.exists():  # an incomplete or stale entry, or a rebuild: moved aside
                old = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=self.cache_dir))
                os.rename(target, old / "entry")
            try:
                os.rename(tmp, target)
            except OSError:  # another process (without a working lock) finished it first
                store = self._open_valid(target, key)
                if store is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return store
            finally:
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(parts, ignore_errors=True)
        if failures:
            listed = "".join(f"\n  {f['path']}: {f['reason']}" for f in failures[:_LISTED])
            more = len(failures) - _LISTED
            if more > 0:
                listed += f"\n  ... and {more} more (all in {target / 'index.json'})"
            warnings.warn(f"{len(failures)} of {n} clips of {corpus.name!r} could not be "
                          f"decoded and are left out of the feature store:{listed}",
                          stacklevel=4)
        return FeatureStore(target)


def build_feature_store(
    corpus: Corpus,
    frontend_config: FrontendConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    dtype: DType = "float32",
    workers: int | None = None,
    on_error: OnError = "skip",
    progress: bool = False,
    rebuild: bool = False,
) -> FeatureStore:
    """Open the cached features of ``corpus`` under ``frontend_config``, computing them
    once if needed (see :class:`FeatureCache`)."""
    cache = FeatureCache(cache_dir, frontend_config, dtype=dtype, workers=workers,
                         on_error=on_error, progress=progress)
    return cache.get(corpus, rebuild=rebuild)
