"""Jobs: library functions that take a typed config and return a result dataclass.

No argument parsing and no printing here; ``csc_cli.cli`` renders the results. Progress is reported
as typed events (:mod:`csc_cli.jobs.events`).

Two task families, side by side and neither importing the other: :mod:`.classifier` (train,
evaluate, inspect) and :mod:`.autoencoder` (the CTRL game, evaluate, inspect). What they share:
:mod:`.run` (the run skeleton: start, epoch loop, state, exact resume, metrics, summary and model
files), :mod:`.train_data` (a run's batches), :mod:`.training` (the loop's reusable parts),
:mod:`.train_config` (``TrainConfig``) and :mod:`.common` (devices, predictions and accuracy,
evaluation data, lambda grids). :func:`csc_cli.jobs.train.run_train` is the one place that picks a
family. ``attack``, ``convert`` and ``demo`` stand alone. The import-linter contracts in
pyproject.toml keep this layering.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:  # torch is imported when a job needs it, not by the shell's --help
    if name in ("resolve_device", "autocast"):
        from . import common

        return getattr(common, name)
    raise AttributeError(f"module 'csc_cli.jobs' has no attribute {name!r}")
