"""``metavox data ...``: corpus inspection and generation."""

from __future__ import annotations

import typer

data_app = typer.Typer(help="Inspect and generate speech corpora.", no_args_is_help=True)
