"""Jobs: library functions that take a typed config and return a result dataclass.

No argument parsing and no printing here; ``csc_cli.cli`` renders the results. Progress is reported
as typed events (:mod:`csc_cli.jobs.events`). The pieces several jobs share -- devices, predictions
and accuracy, evaluation data, lambda grids -- live in :mod:`csc_cli.jobs.common`; the training
loop's reusable parts in :mod:`csc_cli.jobs.training`.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:  # torch is imported when a job needs it, not by the shell's --help
    if name in ("resolve_device", "autocast"):
        from . import common

        return getattr(common, name)
    raise AttributeError(f"module 'csc_cli.jobs' has no attribute {name!r}")
