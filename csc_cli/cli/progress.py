"""Progress of a long job: a rich bar on a terminal, plain lines anywhere else.

When output goes to a file, a pipe or a CI log, a live bar shows nothing; :class:`JobProgress` then
prints a plain line when a stage starts and at least every :data:`PLAIN_INTERVAL_S` seconds (a
heartbeat thread covers stages that run long between two events).
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

PLAIN_INTERVAL_S = 30.0  # at most this long without a line when not on a terminal


class JobProgress:
    """``with JobProgress(console, "training") as p: p.update(stage, done, total, stats)``."""

    def __init__(self, console: Console, label: str, transient: bool = True) -> None:
        self.console, self.label, self.transient = console, label, transient
        self.live = console.is_terminal
        self.stage, self.done, self.total, self.stats = "", 0, 0, ""
        self._bar: Optional[Progress] = None
        self._task = None
        self._started = self._last_line = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ context
    def __enter__(self) -> "JobProgress":
        if self.live:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console,
                                 transient=self.transient)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=None, stats="")
        else:
            self._thread = threading.Thread(target=self._heartbeat, name="csc-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        if self._bar is not None:
            self._bar.__exit__(*exc)

    # ------------------------------------------------------------------ updates
    def update(self, stage: str, done: int, total: Optional[int], stats: str = "", restart: bool = False) -> None:
        """Show ``stage``: ``done`` of ``total`` (None or 0: unknown), with ``stats`` after the bar.
        ``restart`` (a new epoch) starts the bar's clock again."""
        with self._lock:
            new_stage = stage != self.stage
            self.stage, self.done, self.total, self.stats = stage, done, total or 0, stats
        if self._bar is not None:
            if restart:
                self._bar.reset(self._task, total=total or None, completed=done, description=stage, stats=stats)
            else:
                self._bar.update(self._task, description=stage, completed=done, total=total or None, stats=stats)
        elif new_stage or time.monotonic() - self._last_line >= PLAIN_INTERVAL_S:
            self._line()

    def print(self, text: str) -> None:
        """A line above the bar (or in the log)."""
        self.console.print(text, highlight=False)
        if not self.live:
            self._last_line = time.monotonic()

    # ------------------------------------------------------------------ plain lines
    def _line(self) -> None:
        with self._lock:
            count = f" {self.done}/{self.total}" if self.total else (f" {self.done}" if self.done else "")
            text = f"{self.stage or self.label}{count}{'  ' + self.stats if self.stats else ''}"
            self._last_line = time.monotonic()
        self.console.print(f"[{time.monotonic() - self._started:6.0f} s] {text}", highlight=False, markup=False,
                           soft_wrap=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(max(PLAIN_INTERVAL_S / 4, 0.05), 5.0)):
            if time.monotonic() - self._last_line >= PLAIN_INTERVAL_S:
                self._line()


# ----------------------------------------------------------------------------- job events
def on_steps(bar: JobProgress, on_other=None):
    """A progress callback for jobs that report :class:`~csc_cli.jobs.events.Step` events; other
    events go to ``on_other``."""
    from ..jobs.events import Step

    def callback(event) -> None:
        if isinstance(event, Step):
            bar.update(event.stage, event.done, event.total, event.detail)
        elif on_other is not None:
            on_other(event)

    return callback


def run_and_show(job, config, label: str, as_json: bool, show, on_other=None) -> None:
    """Run ``job(config, progress)`` under a progress bar (on stderr with ``--json``), then print its
    result as JSON or hand the result dict to ``show``; ``on_other`` gets non-Step events."""
    import json

    from .app import console, err_console

    with JobProgress(err_console if as_json else console, label) as bar:
        result = job(config, on_steps(bar, on_other=None if as_json else on_other)).to_dict()
    if as_json:
        console.print_json(json.dumps(result))
    else:
        show(result)


class TrainView:
    """Renders a training run's events: the start line, a bar (or plain lines) per epoch, a table
    row and a line per finished epoch."""

    def __init__(self, bar: JobProgress, title: str) -> None:
        from rich.table import Table

        self.bar = bar
        self.epochs = 0
        self.table = Table(title=title)
        self._columns = False

    def _columns_for(self, names) -> None:
        if not self._columns:
            for col in names:
                self.table.add_column(col, justify="right")
            self._columns = True

    def __call__(self, event) -> None:
        from ..jobs.events import BatchEnd, EpochEnd, EpochStart, GameEpochEnd, Step, TrainStart

        if isinstance(event, Step):  # after the epochs: calibrating the lambda rule
            self.bar.update(event.stage, event.done, event.total, event.detail)
        elif isinstance(event, TrainStart):
            self.epochs = event.epochs
            for note in event.notes:
                self.bar.print(f"note: {note}")
            self.bar.print(f"{event.arch}: {event.parameters:,} parameters on {event.device}, {event.train_images} "
                           f"training images, {event.steps_per_epoch} steps per epoch")
        elif isinstance(event, EpochStart):
            self.bar.update(f"epoch {event.epoch + 1}/{self.epochs}", event.first_batch, event.batches, restart=True)
        elif isinstance(event, BatchEnd):
            scores = (f"T {event.loss:.2f}" if event.acc != event.acc  # a game: no accuracy (NaN)
                      else f"loss {event.loss:.3f} acc {100 * event.acc:.1f}%")
            self.bar.update(f"epoch {event.epoch + 1}/{self.epochs}", event.batch, event.batches,
                            f"{scores} {event.images_per_s:.0f} img/s")
        elif isinstance(event, GameEpochEnd):
            self._columns_for(("epoch", "T", "dR(Z)", "dR(Zh)", "pairwise", "test PSNR dB", "test dR", "img/s"))
            terms = [("-" if v is None else f"{v:.2f}") for v in (event.dR_Z, event.dR_Zh)]  # None: binary mode
            self.table.add_row(str(event.epoch), f"{event.T:.2f}", *terms,
                               f"{event.pairwise:.2f}", f"{event.test_psnr:.2f}", f"{event.test_dR:.2f}",
                               f"{event.images_per_s:.0f}")
            self.bar.print(f"epoch {event.epoch}: T {event.T:.2f}, test PSNR {event.test_psnr:.2f} dB, "
                           f"test dR {event.test_dR:.2f}")
        elif isinstance(event, EpochEnd):
            self._columns_for(("epoch", "lr", "train loss", "train acc", "test acc", "val acc", "img/s",
                               "CSC non-zeros", "step t"))
            layers = event.csc_layers
            nz = "/".join(f"{100 * v['nonzero']:.0f}%" for v in list(layers.values())[:3]) or "-"
            step_t = f"{next(iter(layers.values()))['step_size']:.3g}" if layers else "-"
            self.table.add_row(str(event.epoch), f"{event.lr:.3g}", f"{event.train_loss:.3f}",
                               f"{100 * event.train_acc:.1f}%", f"{100 * event.test_acc:.2f}%",
                               f"{100 * event.val_acc:.2f}%" if event.val_acc is not None else "-",
                               f"{event.images_per_s:.0f}", nz, step_t)
            self.bar.print(f"epoch {event.epoch}: test accuracy {100 * event.test_acc:.2f}%")
