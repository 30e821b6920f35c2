"""The Typer application and the two consoles every command prints to."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="csc",
    help="Convolutional sparse coding for real vision models (SDNet, CSC-CTRL).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Convolutional sparse coding for real vision models (SDNet, CSC-CTRL)."""
