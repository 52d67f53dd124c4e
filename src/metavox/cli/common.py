"""Helpers shared by the commands: clear errors and tables."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TextIO

import typer

#: exit status for a config, setting or checkpoint that cannot be used: nothing was done
#: (2, as for a bad command-line option); 1 is for everything that failed while working
USAGE = 2


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` to stderr; the returned Exit has status ``code``."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


def printable(text: object) -> str:
    """``str(text)`` safe to print on any UTF-8 stream: the bytes of a file name that are
    not valid UTF-8 (which Python keeps as surrogates) shown as ``\\xff``."""
    text = str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # other lone surrogates
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the commands: ``warning: message`` on stderr (what was
    skipped and why), without the source line that tells a user nothing."""
    kind = "" if issubclass(category, UserWarning) else f"{category.__name__}: "
    typer.echo(printable(f"warning: {kind}{message}"), err=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors into a one-line message: exit status 2 for a config,
    episode setting or checkpoint that cannot be used, 1 for data, audio, a diverging run,
    a busy run folder, a failed write or a pretrained base that is not installed (the
    message names the command that installs it). Warnings inside (a skipped clip, ...) are
    printed as ``warning: ...`` lines."""
    from metavox.audio.io import AudioError
    from metavox.audio.onnx_port import EmbeddingError
    from metavox.data import CorpusError, EpisodeError
    from metavox.data.synth import SynthError
    from metavox.engine import DivergenceError
    from metavox.pipeline.config import ConfigError
    from metavox.storage import CheckpointError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            yield
    except (ConfigError, CheckpointError, EpisodeError) as err:
        raise fail(str(err), USAGE) from None
    except (CorpusError, AudioError, SynthError, DivergenceError, FileNotFoundError,
            ValueError, EmbeddingError) as err:  # EmbeddingError: a pretrained base missing
        raise fail(str(err)) from None
    except OSError as err:  # a full disk, permissions: the message names the file
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; checkpoints written so far are intact (use --resume)") from None


#: the help of the progress options every long command takes
PROGRESS_HELP = ("Progress bars on a terminal (plain progress lines when the output is not "
                 "one); --no-progress: no bars, a plain line every 10 s (count, rate, time "
                 "left) instead.")
QUIET_HELP = "No progress output at all."


def progress_output(bars: bool) -> AbstractContextManager[None]:
    """How the command reports progress: ``--progress`` (``bars``): a bar on a terminal,
    plain lines elsewhere; ``--no-progress``: plain lines everywhere
    (:func:`metavox.progress.lines_only`). ``--quiet`` is passed on as ``progress=False``."""
    from metavox.progress import lines_only

    return nullcontext() if bars else lines_only()


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    Console().print(table)
