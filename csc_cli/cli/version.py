"""``csc version``."""

from __future__ import annotations

from rich.table import Table

from .. import __version__
from .app import command, console


@command(example=[
    ("csc, torch, and whether CUDA is available:", "csc version"),
    ("The same through Python, without the csc script:", "python -m csc_cli version"),
])
def version() -> None:
    """Print the versions of csc and of the libraries it runs on.

    csc, torch, and whether torch sees a CUDA device.
    """
    import torch

    table = Table(show_header=False, box=None)
    table.add_row("csc", __version__)
    table.add_row("torch", torch.__version__)
    table.add_row("cuda available", str(torch.cuda.is_available()))
    console.print(table)
