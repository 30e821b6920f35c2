"""The ``csc`` command line: parse arguments, call a job, render its result. Nothing else.

One module per command (``demo``, ``convert``, ``train``, ``evaluate``, ``inspect``, ``attack``,
``export``, ``version``), shared option types in :mod:`.options`, result renderers in
:mod:`.render`, progress display in :mod:`.progress`. Jobs (and torch) are imported inside the
commands, so ``csc --help`` starts in a fraction of a second.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from . import attack, convert, demo, evaluate, export, inspect, train, version  # noqa: F401 - registers the commands
from .app import app, console, err_console

__all__ = ["app", "main", "console", "err_console"]


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: user errors become one line and exit code 1; ``--debug`` shows the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if not args:  # bare `csc`: the help, as a successful answer (not a "missing command" error)
        args = ["--help"]
    try:
        result = app(args=args, prog_name="csc", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place errors become messages
        if debug:
            raise
        message = getattr(exc, "format_message", None)
        text = message() if callable(message) and getattr(exc, "exit_code", None) == 2 else str(exc)
        err_console.print(f"[red]error:[/] {text}  (run with --debug for the traceback)", highlight=False,
                          soft_wrap=True, markup=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
