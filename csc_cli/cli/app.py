"""The Typer application, the two consoles every command prints to, and how a command's help is written.

Help is meant to read at 80 columns: each command registers through :func:`command`, which turns its
docstring into paragraphs that rich wraps at the terminal's width (the first paragraph, one short
sentence, is the command's line in ``csc --help``) and ends the help with a few real examples
(:func:`examples`). Options are grouped into panels (``rich_help_panel=``) with one-line helps; the
longer story goes into the docstring and docs/<command>.md. :mod:`.helpformat` lays the help out.
"""

from __future__ import annotations

import inspect
from typing import Callable, List, Optional, Sequence, Tuple

import typer
from rich.console import Console

from .helpformat import HelpCommand, HelpGroup


def paragraphs(text: str) -> str:
    """A docstring as help: dedented, each paragraph's lines joined into one (rich wraps it at the
    terminal's width instead of breaking where the source did). A paragraph with indented lines
    (a list, a command) keeps its line breaks."""
    out = []
    for block in inspect.cleandoc(text).split("\n\n"):
        lines = block.splitlines()
        out.append(block if any(line.startswith(" ") for line in lines[1:]) else " ".join(s.strip() for s in lines))
    return "\n\n".join(out)


EXAMPLE_WIDTH = 76  # an example's lines, indent included: the help's 80 columns less its margins


def shell_lines(command_line: str, width: int = EXAMPLE_WIDTH) -> List[str]:
    """A command as shell lines of at most ``width`` characters: indented by 2, broken before an
    option (an option keeps its value) with a trailing backslash, continued indented by 6."""
    groups: List[str] = []
    for word in command_line.split():
        if groups and not word.startswith("-"):
            groups[-1] += " " + word
        else:
            groups.append(word)
    lines, line = [], "  " + groups[0]
    for group in groups[1:]:
        if len(line) + 1 + len(group) + 2 > width:  # room for " \"
            lines.append(line + " \\")
            line = "      " + group
        else:
            line += " " + group
    return lines + [line]


def examples(*items: Tuple[str, str]) -> str:
    """The help's last section: ``(what it does, command)`` pairs, each command on its own indented
    line(s) (see :func:`shell_lines`)."""
    lines = ["[bold]Examples[/]"]
    for what, command_line in items:
        lines += [what, *shell_lines(command_line)]
    return "\n".join(lines)


# the model files `csc train` writes with no flags, and with recipes/ctrl_digits.toml (the examples use them)
SDNET_DIGITS = "runs/digits-resnet20_cifar-stem/model.safetensors"
CTRL_DIGITS = "runs/digits-ctrl_dcgan32-all/model.safetensors"

app = typer.Typer(
    name="csc",
    cls=HelpGroup,
    help="Convolutional sparse coding for real vision models (SDNet, CSC-CTRL).",
    epilog=examples(
        ("Train SDNet on the built-in digits, offline, in well under a minute:", "csc train"),
        ("Evaluate the model it wrote, on noise corruptions too:",
         f"csc eval {SDNET_DIGITS} -c noise"),
        ("Every command's options, grouped, with their defaults:", "csc train --help"),
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def command(name: Optional[str] = None, *, example: Sequence[Tuple[str, str]]) -> Callable:
    """Register a command: its docstring becomes the help (see :func:`paragraphs`), ``example`` the
    closing examples (see :func:`examples`)."""

    def register(fn: Callable) -> Callable:
        return app.command(name, cls=HelpCommand, help=paragraphs(fn.__doc__ or ""),
                           epilog=examples(*example))(fn)

    return register


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Convolutional sparse coding for real vision models (SDNet, CSC-CTRL)."""
