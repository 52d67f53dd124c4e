"""The ``metavox`` command line."""

from __future__ import annotations

import typer

from metavox.cli import commands, kws
from metavox.cli.data import data_app

app = typer.Typer(
    name="metavox",
    help="Few-shot speech recognition by meta-learning (MAML and its family).",
    no_args_is_help=True,
    add_completion=False,
    # plain help text: with rich markup, "[synth]" or "[default: ...]" in a help string
    # would be read as a style tag and vanish
    rich_markup_mode=None,
)
app.add_typer(data_app, name="data")
app.command("demo")(commands.demo_command)
app.command("train")(commands.train_command)
app.command("evaluate")(commands.evaluate_command)
app.command("adapt")(commands.adapt_command)
app.command("predict")(commands.predict_command)
app.command("listen")(kws.listen_command)
app.command("export")(kws.export_command)
app.command("streams")(kws.streams_command)
app.command("serve")(kws.serve_command)
app.command("models")(commands.models_command)
app.command("algorithms")(commands.algorithms_command)


@app.command()
def version() -> None:
    """Print the installed metavox version."""
    from metavox import __version__

    typer.echo(__version__)


def main() -> None:
    """Entry point of the ``metavox`` script and ``python -m metavox``."""
    app()
