"""``--help`` that reads at 80 columns.

Typer's own rich help lays every option panel out as a six-column table (long names, short names,
negative names, negative short names, type, help): at 80 columns a ``--x/--no-x`` flag or a choice
list such as ``<unrolled|implicit|recompute>`` leaves the help 18-25 characters, and a negative
name can be cut. This renderer keeps Typer's look (the usage line, the description, rounded panels
per ``rich_help_panel``, the epilog) with two columns per panel, as argparse does: the option's
names and type, then its help and default. Names too long for the first column get a line of their
own, the help starts below them. It reads only what click itself prints in plain help
(``param.get_help_record``), so the option names, types, choices and defaults shown are exactly
Typer's.

Used by every command (:class:`HelpCommand`) and by ``csc`` itself (:class:`HelpGroup`).
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

LEFT_SHARE = 0.36  # the names column's share of a panel's width, at most (longer names: a line of their own)
GAP = 2  # spaces between the names and the help

_OPTION = re.compile(r"(?<![\w<|/.-])--?[A-Za-z][\w-]*")
_TYPE = re.compile(r"<[^<>]*>(\.\.\.)?$")
_EXTRAS = re.compile(r"\s\s(\[[^\[\]]*\])$")  # click's "  [default: ...]" / "  [required]" after the help


def _console() -> Console:
    """stdout, as wide as TERMINAL_WIDTH (Typer's setting), else COLUMNS or the terminal."""
    width = os.environ.get("TERMINAL_WIDTH", "")
    return Console(width=int(width) if width.isdigit() else None, highlight=False)


def _options(text: Text) -> Text:
    text.highlight_regex(_OPTION, "bold cyan")
    return text


def _names(names: str) -> Text:
    """'--shortcut / --no-shortcut', '--lambda, --lam <float>', '-c, --corruptions <list[str]>'."""
    text = Text(names)
    match = _TYPE.search(names)
    end = match.start() if match else len(names)
    positive, _, negative = names[:end].partition(" / ")
    for found in _OPTION.finditer(positive):
        text.stylize("bold cyan", found.start(), found.end())
    if negative:
        text.stylize("bold magenta", len(positive) + 3, end)
    elif not _OPTION.search(positive):  # an argument
        text.stylize("bold cyan", 0, end)
    if match:
        text.stylize("bold yellow", match.start(), match.end())
    return text


def _help(text: str, required: bool) -> Tuple[Text, Text]:
    """The help (rich markup, as Typer reads it) and click's extras after it ([default: ...]), dimmed."""
    extras = []
    while True:
        match = _EXTRAS.search(text)
        if not match:
            break
        extras.insert(0, match.group(1))
        text = text[: match.start()]
    if required and "[required]" not in extras:
        extras.append("[required]")
    tail = Text(" ").join(Text(e, style="dim red" if e == "[required]" else "dim") for e in extras)
    return _options(Text.from_markup(text.strip())), tail


Row = Tuple[Text, Text, Text]  # names, help, extras


def _rows(command, ctx) -> Dict[str, List[Row]]:
    """Panel title -> (names, help) rows, in the order Typer prints them: the arguments (the
    untitled ones first), the untitled options (--help among them), then each titled panel in the
    order its first option was declared."""
    arguments: Dict[str, list] = {"Arguments": []}
    options: Dict[str, list] = {"Options": []}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or getattr(param, "hidden", False):
            continue
        is_argument = getattr(param, "param_type_name", "") == "argument"
        title = getattr(param, "rich_help_panel", None) or ("Arguments" if is_argument else "Options")
        row = (_names(record[0]), *_help(record[1], bool(param.required)))
        (arguments if is_argument else options).setdefault(title, []).append(row)
    return {title: rows for title, rows in {**arguments, **options}.items() if rows}


def _joined(console: Console, help_text: Text, extras: Text, width: int) -> Text:
    """The help, then the extras: on its last line if they fit there whole, else on a line below."""
    if not extras:
        return help_text
    if not help_text:
        return extras
    last = help_text.wrap(console, width)[-1]
    return Text("").join([help_text, Text(" " if last.cell_len + 1 + extras.cell_len <= width else "\n"), extras])


def _panel(console: Console, title: str, rows: List[Row], left: int) -> Panel:
    width = console.width - 4 - left - GAP  # of the help column
    parts: List[RenderableType] = []
    grid: Optional[Table] = None
    for names, help_text, extras in rows:
        if names.cell_len > left:  # the names alone on a line, the help below them
            parts.append(names)
            names, grid = Text(""), None
        if grid is None:
            grid = Table.grid(padding=(0, GAP, 0, 0), expand=True)
            grid.add_column(width=left, no_wrap=True)
            grid.add_column(ratio=1)
            parts.append(grid)
        grid.add_row(names, _joined(console, help_text, extras, width))
    return Panel(Group(*parts), title=title, title_align="left", border_style="dim")


def _paragraphs(text: str) -> List[str]:
    text = (text or "").split("\f")[0].strip()
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def _commands_panel(group, ctx) -> Optional[Panel]:
    table = Table.grid(padding=(0, GAP, 0, 0), expand=True)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(ratio=1)
    for name in group.list_commands(ctx):
        sub = group.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        summary = sub.short_help or (_paragraphs(sub.help or "") or [""])[0]
        table.add_row(name, _options(Text.from_markup(" ".join(summary.split()))))
    return Panel(table, title="Commands", title_align="left", border_style="dim") if table.row_count else None


def render_help(command, ctx) -> None:
    """Print ``command``'s help: usage, description, option panels, commands (a group), epilog."""
    console = _console()
    console.print(Padding(Text(command.get_usage(ctx), style="bold"), 1))
    paragraphs = _paragraphs(command.help or "")
    if paragraphs:
        body = [_options(Text.from_markup(paragraphs[0]))]
        for paragraph in paragraphs[1:]:
            body += [Text(""), _options(Text.from_markup(paragraph, style="dim"))]
        console.print(Padding(Group(*body), (0, 1, 1, 1)))
    panels = _rows(command, ctx)
    inner = console.width - 4  # the panel's border and padding
    widths = [row[0].cell_len for rows in panels.values() for row in rows]
    left = max([w for w in widths if w <= inner * LEFT_SHARE] or [int(inner * LEFT_SHARE)])
    for title, rows in panels.items():
        console.print(_panel(console, title, rows, left))
    if isinstance(command, TyperGroup):
        commands = _commands_panel(command, ctx)
        if commands is not None:
            console.print(commands)
    if command.epilog:
        console.print(Padding(_options(Text.from_markup(command.epilog.strip("\n"))), (1, 1, 0, 1)))


class HelpCommand(TyperCommand):
    """A Typer command whose ``--help`` is :func:`render_help`."""

    def format_help(self, ctx, formatter) -> None:
        if getattr(self, "rich_markup_mode", "rich") is None:
            return super().format_help(ctx, formatter)
        render_help(self, ctx)


class HelpGroup(TyperGroup):
    """The Typer group whose ``--help`` is :func:`render_help`."""

    def format_help(self, ctx, formatter) -> None:
        if getattr(self, "rich_markup_mode", "rich") is None:
            return super().format_help(ctx, formatter)
        render_help(self, ctx)
