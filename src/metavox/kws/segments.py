"""Word-level decisions: cut a stream into speech segments by energy as it arrives, and
score one window per segment, presented as an enrollment clip is.

The sliding window of :mod:`metavox.kws.spotter` scores every hop, so a non-target word is
scored in some 25 windows at every alignment (parts of it, it with its neighbours) and
the best of those decides. A segment is scored once: the front-end's window centred on it,
holding the segment and ``context_ms`` either side and zeros beyond, as a short
enrollment clip sits zero-padded in its window (and so the neighbouring words are not in
view). This suits words spoken on their own (commands), not words inside continuous
speech, where segments run together.

:class:`Segmenter` works live (``metavox listen --decision segments``, and the stream
protocol's ``--decision segments`` runs the very same code over a recorded stream): a
20 ms frame is loud when its energy is ``above_db`` over the noise floor, the
``floor_percentile`` of the last ``history_s`` seconds of frames; loud stretches closer
than ``bridge_ms`` merge, a stretch ends after ``bridge_ms`` of quiet (or at ``max_ms``),
and one shorter than ``min_ms`` is dropped. A segment is decided as soon as its context
after the end has arrived, so a detection comes ``max(bridge_ms, context_ms)`` after the
word ends, plus the model's time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SegmentSettings:
    """How :class:`Segmenter` cuts speech (see the module doc)."""

    frame_ms: float = 20.0
    floor_percentile: float = 20.0
    above_db: float = 8.0
    bridge_ms: float = 150.0
    min_ms: float = 120.0
    max_ms: float = 3000.0
    history_s: float = 10.0
    context_ms: float = 250.0

    def __post_init__(self) -> None:
        if self.frame_ms <= 0 or self.history_s <= 0 or self.max_ms <= self.min_ms:
            raise ValueError(f"need frame_ms > 0, history_s > 0 and max_ms > min_ms, got "
                             f"{self.frame_ms}, {self.history_s}, {self.max_ms}, "
                             f"{self.min_ms}")
        if not 0 <= self.floor_percentile <= 100:
            raise ValueError(f"floor_percentile must be in [0, 100], got "
                             f"{self.floor_percentile}")
        if min(self.bridge_ms, self.min_ms, self.context_ms) < 0:
            raise ValueError("bridge_ms, min_ms and context_ms must be >= 0")


@dataclass(frozen=True)
class Segment:
    """A speech segment (``start``, ``end`` seconds from the stream's start), decided at
    ``time`` (when its window's last sample had arrived), and ``window``: the front-end's
    window centred on it, zeros beyond the segment's context."""

    start: float
    end: float
    time: float
    window: np.ndarray


class Segmenter:
    """Live energy segmentation of a mono stream at ``sample_rate`` into windows of
    ``window`` samples (see the module doc): :meth:`push` chunks of any size, and
    :meth:`flush` at the stream's end."""

    def __init__(self, sample_rate: int, window: int,
                 settings: SegmentSettings | None = None) -> None:
        self.settings = s = settings or SegmentSettings()
        self.rate, self.size = int(sample_rate), int(window)
        self.frame = max(1, int(round(self.rate * s.frame_ms / 1000)))
        frames_per_s = self.rate / self.frame
        self._history: deque[float] = deque(maxlen=max(1, round(s.history_s * frames_per_s)))
        self._bridge = s.bridge_ms / s.frame_ms
        self._max = max(1, math.ceil(s.max_ms / s.frame_ms))
        self._context = int(round(s.context_ms / 1000 * self.rate))
        # the audio kept: enough for the longest segment's window and its context
        self._keep = self.size + int((s.max_ms + s.bridge_ms) / 1000 * self.rate) + \
            2 * self._context + 2 * self.frame
        self._audio = np.zeros(0, np.float32)
        self._base = 0  # absolute index of self._audio[0]
        self._frames = 0  # frames measured so far
        self._open: int | None = None  # first frame of the loud stretch under way
        self._last = 0  # its last loud frame
        # closed segments: samples [start, end) and the sample at which they closed
        self._pending: list[tuple[int, int, int]] = []

    @property
    def samples(self) -> int:
        """Samples pushed so far."""
        return self._base + len(self._audio)

    def push(self, chunk: np.ndarray) -> list[Segment]:
        """The segments whose window ``chunk`` completes."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)  # as the feature stream
        if not np.isfinite(chunk).all():
            raise ValueError("the stream holds NaN or infinite samples")
        self._audio = np.concatenate([self._audio, chunk])
        while (self._frames + 1) * self.frame <= self.samples:
            self._step(self._frames)
            self._frames += 1
        out = self._ready(final=False)
        cut = len(self._audio) - self._keep
        if cut > 0:
            self._audio = self._audio[cut:]
            self._base += cut
        return out

    def flush(self) -> list[Segment]:
        """At the stream's end: close the stretch under way, and decide every pending
        segment with zeros past the end."""
        rest = self.samples - self._frames * self.frame
        if rest > 0:  # the last, partial frame, zero-padded
            self._audio = np.concatenate([self._audio, np.zeros(self.frame - rest,
                                                                np.float32)])
            self._step(self._frames)
            self._frames += 1
            self._audio = self._audio[:len(self._audio) - (self.frame - rest)]
        if self._open is not None:
            self._close(self._open, self._last + 1, self._frames)
        return self._ready(final=True)

    def _step(self, f: int) -> None:
        lo = f * self.frame - self._base
        frame = self._audio[lo:lo + self.frame].astype(np.float64)
        db = 20 * math.log10(math.sqrt(float(np.mean(frame * frame))) + 1e-6)
        self._history.append(db)
        floor = float(np.percentile(np.fromiter(self._history, float),
                                    self.settings.floor_percentile))
        if db > floor + self.settings.above_db:
            if self._open is None:
                self._open = f
            self._last = f
            if f + 1 - self._open >= self._max:
                self._close(self._open, f + 1, f + 1)
        elif self._open is not None and f - self._last >= self._bridge:
            self._close(self._open, self._last + 1, f + 1)

    def _close(self, first: int, end: int, now: int) -> None:
        self._open = None
        if (end - first) * self.settings.frame_ms >= self.settings.min_ms:
            self._pending.append((first * self.frame, end * self.frame, now * self.frame))

    def _ready(self, *, final: bool) -> list[Segment]:
        out, left = [], []
        for start, end, closed in self._pending:
            needed = min(end + self._context, (start + end) // 2 + self.size - self.size // 2)
            if needed > self.samples and not final:
                left.append((start, end, closed))
                continue
            out.append(self._segment(start, end, max(needed, closed)))
        self._pending = left
        return out

    def _segment(self, start: int, end: int, decided: int) -> Segment:
        mid = (start + end) // 2
        lo = mid - self.size // 2
        window = np.zeros(self.size, np.float32)
        a, b = max(lo, start - self._context, self._base), min(lo + self.size,
                                                              end + self._context,
                                                              self.samples)
        if b > a:
            window[a - lo:b - lo] = self._audio[a - self._base:b - self._base]
        return Segment(start / self.rate, end / self.rate,
                       min(decided, self.samples) / self.rate, window)


def segment_stream(wave: np.ndarray, sample_rate: int, window: int,
                   settings: SegmentSettings | None = None) -> list[Segment]:
    """Every segment of a recorded stream, as :class:`Segmenter` decides them live."""
    seg = Segmenter(sample_rate, window, settings)
    return seg.push(wave) + seg.flush()
