"""Speech corpora as flat lists of labelled utterances.

A :class:`Corpus` is built from a folder and a path *pattern* with named fields
(``{label}/{speaker}_nohash_{n}.wav``), from a CSV *manifest*, or from a *preset* that
names the pattern of a well-known layout. It only lists files; audio is read later, by
:func:`scan_corpus` (headers) and by the feature cache (samples).
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import statistics
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

#: File extensions read as audio (matched case-insensitively).
AUDIO_EXTENSIONS: tuple[str, ...] = ("wav", "flac", "ogg", "mp3")

_FIELD = re.compile(r"\{([^{}]*)\}")
_EXT_RE = "(?i:" + "|".join(AUDIO_EXTENSIONS) + ")"


class CorpusError(ValueError):
    """A corpus cannot be built: missing root, nothing matched, or a bad manifest."""


@dataclass(frozen=True)
class Utterance:
    """One labelled recording: absolute ``path``, class ``label``, ``speaker`` (or None).

    ``extra`` keeps any further manifest columns as ``(name, value)`` pairs (see ``meta``).
    """

    path: str
    label: str
    speaker: str | None
    extra: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def meta(self) -> dict[str, str]:
        """The extra manifest columns as a dict."""
        return dict(self.extra)


@dataclass(frozen=True)
class Preset:
    """The path pattern (relative to the corpus root) of a well-known corpus layout."""

    name: str
    pattern: str
    exclude_labels: tuple[str, ...] = ()
    description: str = ""


PRESETS: dict[str, Preset] = {
    "speech-commands": Preset(
        "speech-commands",
        "{label}/{speaker}_nohash_{_}.wav",
        exclude_labels=("_silence_", "_background_noise_"),
        description="Speech Commands v0.01/v0.02: {word}/{speaker}_nohash_{n}.wav|flac",
    ),
    "fsdd": Preset(
        "fsdd",
        "recordings/{label}_{speaker}_{_}.wav",
        description="Free Spoken Digit Dataset: recordings/{digit}_{speaker}_{index}.wav",
    ),
}
_PRESET_ALIASES = {"speech_commands": "speech-commands", "speechcommands": "speech-commands"}


def _preset(name: str) -> Preset:
    key = _PRESET_ALIASES.get(name.lower(), name.lower())
    if key not in PRESETS:
        raise CorpusError(f"unknown corpus preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[key]


# ----------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class CompiledPattern:
    """A path pattern compiled to an anchored regex over ``/``-separated relative paths."""

    pattern: str
    regex: re.Pattern[str]
    max_depth: int | None  # folders below the root; None when ``**`` allows any depth
    has_speaker: bool


def compile_pattern(pattern: str) -> CompiledPattern:
    """Compile ``pattern`` (``{label}``, ``{speaker}``, other fields ignored, ``**`` = any
    folders) to a regex; the audio extension in the pattern, if any, matches every audio
    extension case-insensitively."""
    pat = pattern.replace("\\", "/").strip("/")
    if not pat:
        raise CorpusError("empty corpus pattern")
    stem, dot, ext = pat.rpartition(".")
    if dot and "/" not in ext and "{" not in ext and ext.lower() in (*AUDIO_EXTENSIONS, "*"):
        pat = stem
    names = _FIELD.findall(pat)
    for field_name in ("label", "speaker"):
        if names.count(field_name) > 1:
            raise CorpusError(f"pattern {pattern!r} names {{{field_name}}} more than once")
    if "label" not in names:
        raise CorpusError(f"pattern {pattern!r} has no {{label}} field")
    out: list[str] = []
    segments = pat.split("/")
    for i, seg in enumerate(segments):
        if seg == "**":
            out.append("(?:[^/]+/)*")
            continue
        pos = 0
        for m in _FIELD.finditer(seg):
            out.append(re.escape(seg[pos : m.start()]).replace(r"\*", "[^/]*"))
            name = m.group(1)
            out.append(f"(?P<{name}>[^/]+?)" if name in ("label", "speaker") else "[^/]+?")
            pos = m.end()
        out.append(re.escape(seg[pos:]).replace(r"\*", "[^/]*"))
        if i < len(segments) - 1:
            out.append("/")
    regex = re.compile("^" + "".join(out) + r"\." + _EXT_RE + "$", re.DOTALL)
    depth = None if "**" in segments else len(segments) - 1
    return CompiledPattern(pattern, regex, depth, "speaker" in names)


def _is_audio(name: str) -> bool:
    ext = name.rpartition(".")[2].lower()
    return "." in name and ext in AUDIO_EXTENSIONS


def _walk_audio(root: str, max_depth: int | None) -> tuple[list[str], int]:
    """Relative ``/``-paths of all audio files under ``root`` (sorted), and the number of
    files seen. Hidden entries are skipped; folders deeper than ``max_depth`` are pruned."""
    found: list[str] = []
    n_files = 0
    seen: set[tuple[int, int]] = set()  # (device, inode) of folders: no symlink loops
    stack: list[tuple[str, str, int]] = [(root, "", 0)]
    while stack:
        folder, rel, depth = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relpath = rel + entry.name
            if entry.is_dir():
                if max_depth is None or depth < max_depth:
                    stack.append((entry.path, relpath + "/", depth + 1))
            else:
                n_files += 1
                if _is_audio(entry.name):
                    found.append(relpath)
    found.sort()
    return found, n_files


def suggest_pattern(relpaths: Sequence[str]) -> str:
    """A plausible pattern for files like ``relpaths``: when they lie in several folders,
    the parent folder is the label; when all share one folder, the file name's first
    ``_``/``-`` token is the label and the second the speaker."""
    if isinstance(relpaths, str):
        relpaths = [relpaths]
    example = relpaths[len(relpaths) // 2]
    parts = example.split("/")
    stem, _, ext = parts[-1].rpartition(".")
    tokens = re.split(r"[_-]", stem)
    seps = re.findall(r"[_-]", stem)
    one_folder = len({p.rpartition("/")[0] for p in relpaths}) == 1
    if len(parts) > 1 and not one_folder:
        lead = ["{_}"] * (len(parts) - 2) + ["{label}"]
        name = "{speaker}" + (seps[0] + "{_}" if len(tokens) > 1 else "")
    else:
        lead = parts[:-1]
        if len(tokens) >= 3:
            name = "{label}" + seps[0] + "{speaker}" + seps[1] + "{_}"
        elif len(tokens) == 2:
            name = "{label}" + seps[0] + "{_}"
        else:
            name = "{label}"
    return "/".join([*lead, name]) + "." + (ext.lower() or "wav")


# ----------------------------------------------------------------------------- corpus


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


@dataclass(frozen=True)
class Corpus:
    """An ordered, immutable list of :class:`Utterance` under a ``root`` folder.

    ``source`` says how the corpus was built (pattern, manifest, preset, filters), so that
    reports and caches can name it.
    """

    utterances: tuple[Utterance, ...]
    root: str
    name: str = "corpus"
    source: str = ""

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    def __getitem__(self, i: int) -> Utterance:
        return self.utterances[i]

    @property
    def labels(self) -> list[str]:
        """Sorted distinct labels."""
        return sorted({u.label for u in self.utterances})

    @property
    def speakers(self) -> list[str]:
        """Sorted distinct known speakers (``None`` excluded)."""
        return sorted({u.speaker for u in self.utterances if u.speaker is not None})

    def by_label(self) -> dict[str, list[Utterance]]:
        """Utterances grouped by label (labels sorted, utterances in corpus order)."""
        return _group(self.utterances, lambda u: u.label)

    def by_speaker(self) -> dict[str, list[Utterance]]:
        """Utterances grouped by known speaker (speakers sorted)."""
        return _group((u for u in self.utterances if u.speaker is not None),
                      lambda u: u.speaker or "")

    def filter(
        self,
        labels: Iterable[str] | None = None,
        speakers: Iterable[str] | None = None,
    ) -> Corpus:
        """The utterances whose label is in ``labels`` and speaker in ``speakers`` (either
        ``None`` = no constraint; a speaker constraint drops unknown speakers)."""
        lab = None if labels is None else set(labels)
        spk = None if speakers is None else set(speakers)
        kept = tuple(
            u for u in self.utterances
            if (lab is None or u.label in lab) and (spk is None or u.speaker in spk)
        )
        what = []
        if lab is not None:
            what.append(f"{len(lab)} labels")
        if spk is not None:
            what.append(f"{len(spk)} speakers")
        return replace(self, utterances=kept,
                       source=f"{self.source} | filter({', '.join(what) or 'all'})")

    def relpath(self, utterance: Utterance) -> str:
        """``utterance.path`` relative to the root, with ``/`` separators."""
        prefix = self.root.rstrip(os.sep) + os.sep
        if utterance.path.startswith(prefix):
            rel = utterance.path[len(prefix):]
        else:
            rel = os.path.relpath(utterance.path, self.root)
        return rel.replace(os.sep, "/")

    def fingerprint(self) -> str:
        """Hex SHA-256 of the sorted ``(relpath, label, speaker, size, mtime)`` of every
        file: changes when a file is added, removed, relabelled or rewritten."""
        rows = []
        for u in self.utterances:
            try:
                st = os.stat(u.path)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime = -1, -1
            rows.append((self.relpath(u), u.label, u.speaker or "", size, mtime))
        h = hashlib.sha256()
        for row in sorted(rows):
            # surrogateescape: a file name that is not valid UTF-8 hashes as its bytes
            h.update("\x1f".join(map(str, row)).encode("utf-8", "surrogateescape"))
            h.update(b"\x1e")
        return h.hexdigest()

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_pattern(
        cls,
        root: str | os.PathLike[str],
        pattern: str,
        *,
        name: str | None = None,
        exclude_labels: Iterable[str] = (),
    ) -> Corpus:
        """Scan ``root`` once for audio files whose relative path matches ``pattern``."""
        root_s = _check_root(root)
        comp = compile_pattern(pattern)
        files, n_files = _walk_audio(root_s, comp.max_depth)
        excluded = {_nfc(x) for x in exclude_labels}
        utts = []
        for rel in files:
            m = comp.regex.match(rel)
            if m is None:
                continue
            label = _nfc(m.group("label"))
            if label in excluded:
                continue
            speaker = _nfc(m.group("speaker")) if comp.has_speaker else None
            utts.append(Utterance(os.path.join(root_s, *rel.split("/")), label, speaker))
        if not utts:
            raise CorpusError(_no_match_message(root_s, pattern, files, n_files, comp))
        return cls(tuple(utts), root_s, name or Path(root_s).name, f"pattern:{pattern}")

    @classmethod
    def from_preset(cls, name: str, root: str | os.PathLike[str]) -> Corpus:
        """A corpus laid out like the preset ``name`` (see :data:`PRESETS`)."""
        p = _preset(name)
        corpus = cls.from_pattern(root, p.pattern, name=p.name, exclude_labels=p.exclude_labels)
        return replace(corpus, source=f"preset:{p.name} ({p.pattern})")

    @classmethod
    def from_manifest(
        cls,
        csv_path: str | os.PathLike[str],
        *,
        root: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> Corpus:
        """Read a CSV with a ``path,label[,speaker]`` header (extra columns kept in
        :attr:`Utterance.extra`); relative paths are resolved against ``root`` (default:
        the manifest's folder); an empty speaker is ``None``."""
        path = Path(csv_path)
        if not path.is_file():
            raise CorpusError(f"manifest not found: {path}")
        root_s = _check_root(root if root is not None else path.resolve().parent)
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing_cols = [c for c in ("path", "label") if c not in header]
            if missing_cols:
                raise CorpusError(
                    f"manifest {path} lacks column(s) {', '.join(missing_cols)}; its header is "
                    f"{','.join(header) or '(empty)'}; expected path,label,speaker[,...]"
                )
            reader.fieldnames = header
            extra_cols = [c for c in header if c not in ("path", "label", "speaker")]
            utts: list[Utterance] = []
            missing: list[str] = []
            for line, row in enumerate(reader, start=2):
                rel = (row.get("path") or "").strip()
                label = _nfc((row.get("label") or "").strip())
                if not rel or not label:
                    raise CorpusError(f"manifest {path}, line {line}: empty path or label")
                full = rel if os.path.isabs(rel) else os.path.join(root_s, rel)
                full = os.path.normpath(full)
                if not os.path.isfile(full):
                    missing.append(rel)
                    continue
                speaker = _nfc((row.get("speaker") or "").strip()) or None
                extra = tuple((c, row.get(c) or "") for c in extra_cols)
                utts.append(Utterance(full, label, speaker, extra))
        if missing:
            raise CorpusError(
                f"manifest {path}: {len(missing)} of {len(missing) + len(utts)} listed files "
                f"do not exist under {root_s} (first: {', '.join(missing[:3])})"
            )
        if not utts:
            raise CorpusError(f"manifest {path} lists no files")
        utts.sort(key=lambda u: u.path)
        return cls(tuple(utts), root_s, name or path.stem, f"manifest:{path}")


def _group(
    utts: Iterable[Utterance], key: Callable[[Utterance], str]
) -> dict[str, list[Utterance]]:
    groups: dict[str, list[Utterance]] = {}
    for u in utts:
        groups.setdefault(key(u), []).append(u)
    return dict(sorted(groups.items()))


def _check_root(root: str | os.PathLike[str]) -> str:
    path = Path(root).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus root does not exist: {path}")
    if not path.is_dir():
        raise CorpusError(f"corpus root is not a folder: {path}")
    return os.path.abspath(path)


def _no_match_message(
    root: str, pattern: str, files: Sequence[str], n_files: int, comp: CompiledPattern
) -> str:
    depth = "any depth" if comp.max_depth is None else f"depth <= {comp.max_depth}"
    head = f"pattern {pattern!r} matched no audio file under {root}"
    anywhere = files if comp.max_depth is None else _walk_audio(root, None)[0]
    if not anywhere:
        return (f"{head}: it holds no audio files ({'/'.join(AUDIO_EXTENSIONS)}) at all "
                f"({n_files} other files seen at {depth})")
    pool = files or anywhere
    return (f"{head}: {len(files)} audio files at {depth}, {len(anywhere)} at any depth, e.g. "
            f"{pool[len(pool) // 2]!r}; try the pattern {suggest_pattern(pool)!r}")


def detect_corpus(root: str | os.PathLike[str]) -> Corpus:
    """The first preset whose pattern matches files under ``root``; a clear error naming
    the presets tried and a suggested pattern otherwise."""
    root_s = _check_root(root)
    for preset in PRESETS.values():
        try:
            return Corpus.from_preset(preset.name, root_s)
        except CorpusError:
            continue
    files, n_files = _walk_audio(root_s, None)
    tried = ", ".join(f"{p.name} ({p.pattern})" for p in PRESETS.values())
    if not files:
        raise CorpusError(f"no audio files ({'/'.join(AUDIO_EXTENSIONS)}) under {root_s} "
                          f"({n_files} other files); nothing to load")
    raise CorpusError(
        f"{root_s} matches no preset ({tried}); {len(files)} audio files, e.g. "
        f"{files[len(files) // 2]!r}; give a pattern such as {suggest_pattern(files)!r}"
    )


def load_corpus(
    spec: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
) -> Corpus:
    """Build a corpus from one string, as configs and the CLI name it.

    ``spec`` is a preset name with ``root`` (or ``"preset:root"``), a pattern with ``root``
    (or an absolute pattern such as ``/data/sc/{label}/{speaker}_nohash_{n}.wav``), a
    ``.csv`` manifest, or a folder whose layout matches a preset.
    """
    s = os.fspath(spec)
    head, sep, tail = s.partition(":")
    if sep and len(head) > 1 and (head.lower() in PRESETS or head.lower() in _PRESET_ALIASES):
        return Corpus.from_preset(head, tail)
    if s.lower() in PRESETS or s.lower() in _PRESET_ALIASES:
        if root is None:
            raise CorpusError(f"preset {s!r} needs a root folder")
        return Corpus.from_preset(s, root)
    if s.lower().endswith(".csv"):
        return Corpus.from_manifest(s, root=root)
    if "{" in s:
        if root is None:
            parts = s.replace("\\", "/").split("/")
            cut = next(i for i, p in enumerate(parts) if "{" in p or "*" in p)
            root, s = "/".join(parts[:cut]) or ".", "/".join(parts[cut:])
        return Corpus.from_pattern(root, s)
    if root is None and os.path.isdir(s):
        return detect_corpus(s)
    raise CorpusError(
        f"cannot read corpus spec {s!r}: give a preset ({', '.join(PRESETS)}) with a root, a "
        "pattern with {label} fields, a .csv manifest, or a folder laid out like a preset"
    )


# ----------------------------------------------------------------------------- scan


@dataclass
class ScanReport:
    """What :func:`scan_corpus` found: counts, durations, sample rates, unreadable files."""

    name: str
    root: str
    source: str
    clips: int
    labels: int
    speakers: int
    clips_per_label: dict[str, int]
    speakers_per_label: dict[str, int]
    clips_per_speaker: dict[str, int]
    unknown_speaker_clips: int = 0
    duration_min: float | None = None
    duration_median: float | None = None
    duration_max: float | None = None
    total_hours: float | None = None
    sample_rates: dict[int, int] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    audio_checked: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (sample-rate and channel keys as strings)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["sample_rates"] = {str(k): v for k, v in self.sample_rates.items()}
        d["channels"] = {str(k): v for k, v in self.channels.items()}
        d["unreadable"] = [{"path": p, "reason": r} for p, r in self.unreadable]
        return d


def _info(path: str) -> tuple[Any, str | None]:
    from metavox.audio.io import AudioError, audio_info

    try:
        return audio_info(path), None
    except AudioError as exc:
        return None, getattr(exc, "problem", None) or str(exc)
    except (OSError, RuntimeError) as exc:
        return None, str(exc) or type(exc).__name__


def scan_corpus(
    corpus: Corpus,
    *,
    check_audio: bool = True,
    workers: int | None = None,
    on_error: Literal["skip", "raise"] = "skip",
) -> ScanReport:
    """Summarise ``corpus``; with ``check_audio`` read every header (threads) for
    durations and sample rates. Unreadable files are listed and skipped with a warning,
    or raise with ``on_error="raise"``."""
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    per_label = Counter(u.label for u in corpus)
    spk_sets: dict[str, set[str]] = {}
    for u in corpus:
        if u.speaker is not None:
            spk_sets.setdefault(u.label, set()).add(u.speaker)
    per_speaker = Counter(u.speaker for u in corpus if u.speaker is not None)
    report = ScanReport(
        name=corpus.name,
        root=corpus.root,
        source=corpus.source,
        clips=len(corpus),
        labels=len(per_label),
        speakers=len(per_speaker),
        clips_per_label=dict(sorted(per_label.items())),
        speakers_per_label={k: len(spk_sets.get(k, ())) for k in sorted(per_label)},
        clips_per_speaker=dict(sorted(per_speaker.items(), key=lambda kv: (-kv[1], kv[0]))),
        unknown_speaker_clips=sum(u.speaker is None for u in corpus),
    )
    if not check_audio or not len(corpus):
        return report
    report.audio_checked = True
    n_workers = workers if workers is not None else min(8, (os.cpu_count() or 1) * 2)
    paths = [u.path for u in corpus]
    if n_workers <= 1:
        results = [_info(p) for p in paths]
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            results = list(pool.map(_info, paths))
    durations: list[float] = []
    rates: Counter[int] = Counter()
    chans: Counter[int] = Counter()
    fmts: Counter[str] = Counter()
    for path, (info, err) in zip(paths, results, strict=True):
        if info is None:
            if on_error == "raise":
                from metavox.audio.io import AudioError

                raise AudioError(f"{path}: {err}")
            report.unreadable.append((corpus.relpath(Utterance(path, "", None)), err or ""))
            continue
        durations.append(float(info.duration))
        rates[int(info.sample_rate)] += 1
        chans[int(info.channels)] += 1
        fmts[str(info.format)] += 1
    if durations:
        report.duration_min = min(durations)
        report.duration_median = float(statistics.median(durations))
        report.duration_max = max(durations)
        report.total_hours = sum(durations) / 3600.0
    report.sample_rates = dict(sorted(rates.items()))
    report.channels = dict(sorted(chans.items()))
    report.formats = dict(sorted(fmts.items()))
    if report.unreadable:
        warnings.warn(
            f"{len(report.unreadable)} of {len(corpus)} files in {corpus.name!r} are unreadable "
            f"and were skipped (first: {report.unreadable[0][0]}: {report.unreadable[0][1]})",
            stacklevel=2,
        )
    return report
