"""The ``metavox`` command line."""

from __future__ import annotations

import typer

from metavox.cli import run
from metavox.cli.data import data_app

app = typer.Typer(
    name="metavox",
    help="Few-shot speech recognition by meta-learning (MAML and its family).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.command("demo")(run.demo_command)
app.command("train")(run.train_command)
app.command("evaluate")(run.evaluate_command)
app.command("adapt")(run.adapt_command)
app.command("predict")(run.predict_command)
app.command("models")(run.models_command)


@app.command()
def version() -> None:
    """Print the installed metavox version."""
    from metavox import __version__

    typer.echo(__version__)


def main() -> None:
    """Entry point of the ``metavox`` script and ``python -m metavox``."""
    app()
