"""Helpers shared by the commands: clear errors and tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; the returned Exit has status 1."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors into a one-line message and exit status 1."""
    from metavox.audio.io import AudioError
    from metavox.data import CorpusError, EpisodeError
    from metavox.data.synth import SynthError
    from metavox.engine import DivergenceError
    from metavox.pipeline.config import ConfigError
    from metavox.storage import CheckpointError

    try:
        yield
    except (ConfigError, CheckpointError, CorpusError, EpisodeError, AudioError, SynthError,
            DivergenceError, FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    except OSError as err:  # a full disk, permissions: the message names the file
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; checkpoints written so far are intact (use --resume)") from None


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
