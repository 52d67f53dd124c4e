"""Progress of long phases (features, training, evaluation, streams): a bar on a terminal,
plain lines anywhere else.

One helper for every layer (it imports nothing from metavox). A :class:`Progress` that is
enabled draws a tqdm bar when its stream is a terminal; when it is not (a log file, a
pipe, a notebook's captured output), or inside :func:`lines_only` (``--no-progress``), it
prints one plain line every ``interval`` seconds and one at the end, and never a carriage
return:

    features fsdd: 1200/12000 clip (10%), 4 clip/s, 5m00s elapsed, ~45m00s left

Disabled (``enabled=False``, ``--quiet``) it prints nothing.

```python
with Progress(len(paths), "features", "clip") as bar:
    for path in paths:
        work(path)
        bar.update()
```
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

#: False inside :func:`lines_only`: enabled progress prints plain lines even on a terminal
_bars = True


def bars_allowed() -> bool:
    """Whether an enabled :class:`Progress` on a terminal draws a bar (False inside
    :func:`lines_only`)."""
    return _bars


@contextmanager
def lines_only() -> Iterator[None]:
    """Inside, every enabled :class:`Progress` prints plain lines at its interval instead
    of drawing a bar, also on a terminal (what ``--no-progress`` asks for)."""
    global _bars
    before, _bars = _bars, False
    try:
        yield
    finally:
        _bars = before


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def duration(seconds: float) -> str:
    """``45s``, ``5m03s``, ``2h07m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _rate(per_second: float) -> str:
    return f"{per_second:.3g}" if per_second < 100 else f"{per_second:.0f}"


class Progress:
    """Progress of one phase: ``total`` steps (None: unknown) of ``unit``, named ``desc``.

    ``enabled=False``: silent. Enabled, on a terminal ``stream`` (default ``sys.stderr``)
    and outside :func:`lines_only`: a tqdm bar. Otherwise one plain line every
    ``interval`` seconds (at an :meth:`update`) and one at :meth:`close`:
    ``desc: done/total unit (pct%), rate unit/s, elapsed, ~time left``. ``initial``: the
    steps already done (a resumed run); the rate counts only those done since.
    A context manager: leaving it closes the progress.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", *,
                 enabled: bool = True, interval: float = 10.0, stream: TextIO | None = None,
                 initial: int = 0) -> None:
        self.total = None if total is None else int(total)
        self.desc, self.unit = desc, unit
        self.enabled = bool(enabled)
        self.interval = float(interval)
        self.stream = sys.stderr if stream is None else stream
        self.initial = self.n = int(initial)
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._lock = threading.Lock()
        self._closed = not self.enabled
        self._bar = None
        if self.enabled and _bars and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, initial=self.initial,
                             file=self.stream, dynamic_ncols=True)

    @property
    def bar(self) -> bool:
        """Whether a tqdm bar is drawn (else plain lines, or nothing when disabled)."""
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        if self._closed:
            return
        with self._lock:
            self.n += n
            if self._bar is not None:
                self._bar.update(n)
                return
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._write(self.line(now))

    def set_postfix(self, text: str) -> None:
        """Extra information shown after the counts (``loss 0.41, val 0.83``)."""
        self.postfix = str(text)
        if self._bar is not None and not self._closed:
            self._bar.set_postfix_str(self.postfix, refresh=False)

    def line(self, now: float | None = None, *, final: bool = False) -> str:
        """The plain progress line as it reads at ``now`` (``final``: the closing one)."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        head = f"{self.desc}: " if self.desc else ""
        if self.total is not None:
            pct = 100 * self.n / self.total if self.total else 100.0
            text = f"{head}{self.n}/{self.total} {self.unit} ({pct:.0f}%)"
        else:
            text = f"{head}{self.n} {self.unit}"
        text += f", {_rate(rate)} {self.unit}/s, {duration(elapsed)} elapsed"
        if final:
            text += (", finished" if self.total is None or self.n >= self.total
                     else ", stopped")
        elif self.total is not None:
            left = duration((self.total - self.n) / rate) if rate > 0 else "?"
            text += f", ~{left} left"
        return f"{text}; {self.postfix}" if self.postfix else text

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: progress is optional
            pass

    def close(self) -> None:
        """End the phase: close the bar, or print the final line. Closing twice is fine."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            else:
                self._write(self.line(final=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_iter(iterable: Iterable[T], total: int | None = None, desc: str = "",
                  unit: str = "it", *, enabled: bool = True, interval: float = 10.0
                  ) -> Iterator[T]:
    """The items of ``iterable``, counting each in a :class:`Progress` (``total``: default
    ``len(iterable)`` when it has one)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc, unit, enabled=enabled, interval=interval) as p:
        for item in iterable:
            yield item
            p.update(1)


def progress_callback(desc: str, unit: str = "it", *, enabled: bool = True,
                      interval: float = 10.0) -> Callable[[int, int], None] | None:
    """A ``progress(done, total)`` callback (what :func:`metavox.engine.evaluate_episodes`
    and the corpus synthesis call) reporting through a :class:`Progress` made at the first
    call and closed when ``done`` reaches ``total``; ``None`` when not ``enabled``."""
    if not enabled:
        return None
    state: dict[str, Progress] = {}

    def report(done: int, total: int) -> None:
        p = state.get("p")
        if p is None:
            p = state["p"] = Progress(total, desc, unit, interval=interval)
        p.update(done - p.n)
        if total is not None and done >= total:
            p.close()

    return report


__all__ = ["Progress", "bars_allowed", "duration", "lines_only", "progress_callback",
           "progress_iter"]
