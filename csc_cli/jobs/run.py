"""The run skeleton both task families train with: one start, one epoch loop, one state file.

:func:`run_training` does what every training run does, the same way for a classifier and for an
autoencoder: resolve and check the config, join a ``torchrun`` group, seed, load the data
(:func:`~csc_cli.jobs.train_data.make_data`), have the family build its model and optimizer, restore
an exact resume (``state.safetensors``), write ``config.json`` and announce the run
(:class:`~csc_cli.jobs.events.TrainStart`); then, every epoch, train, judge and score it, and record
it (a ``metrics.jsonl`` line, ``summary.csv``, ``best.safetensors`` when the family selects on
held-out data, the family's epoch event, the state); at the end, write ``model.safetensors``.

What differs between the families is a :class:`TaskFamily`: how the model and the optimizer are
built, one epoch of optimizer steps, how an epoch is judged and scored, and what the summary says.
The two are the classifier trainer (:mod:`csc_cli.jobs.classifier.train`) and the CTRL game
(:mod:`csc_cli.jobs.autoencoder.train`); :func:`csc_cli.jobs.train.run_train` picks one.
"""

from __future__ import annotations

import csv
import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .._version import __version__
from ..checkpoint import load, save
from ..surgery import card_of
from .common import resolve_device
from .events import Event, ProgressFn, TrainDone, TrainStart, ignore
from .train_config import TrainConfig, stored_config
from .train_data import DataBundle, make_data
from .training import EMA, csc_layer_stats, lr_at, refresh_step_sizes, restore_train_state, save_train_state

__all__ = ["TrainResult", "TaskFamily", "RunContext", "run_training", "write_summary"]

#: ``after_step(epoch, batches_done)``: what the skeleton does after every optimizer step
#: (a mid-epoch checkpoint every ``checkpoint_every`` steps).
AfterStep = Callable[[int, int], None]


@dataclass
class TrainResult:
    out: str
    model_path: str
    epochs: int
    last: Dict[str, Any]
    best: Optional[Dict[str, Any]]
    history: List[Dict[str, Any]]
    parameters: int
    seconds: float
    resumed_from_epoch: Optional[int] = None
    arch: Optional[str] = None  # what was built (``--arch resnet18`` on 32 px images is resnet18_cifar)
    notes: List[str] = field(default_factory=list)
    calibration: Optional[Dict[str, Any]] = None  # the lambda rule calibrated into model.safetensors, if asked

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class RunContext:
    """What a family's :meth:`TaskFamily.setup` is given: the run's resolved config, its data, where
    it runs, the batches of an epoch, the run's notes (append to them) and the progress callback."""

    config: TrainConfig
    data: DataBundle
    device: torch.device
    dist: Any  # a csc_cli.distributed.DistributedContext
    steps_per_epoch: int
    notes: List[str]
    emit: ProgressFn


class TaskFamily(ABC):
    """The per-family pieces of a training run (see the module docstring).

    :meth:`setup` sets ``model`` (what is trained, saved and resumed), ``optimizer`` and ``ema``
    (``None`` without a weight average); ``step`` counts the optimizer steps of the whole run (a
    resume sets it). ``epoch_event`` makes the epoch's progress event from its metrics row;
    ``columns`` are the row's keys in the order ``metrics.jsonl`` and ``summary.csv`` show them
    (``csc_layers`` follows)."""

    epoch_event: Callable[[Dict[str, Any]], Event]
    columns: Tuple[str, ...]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: Optional[EMA] = None

    def resolved(self, config: TrainConfig) -> TrainConfig:
        """The config as this family runs it (what ``config.json`` and the state record)."""
        return config

    def prepare(self, config: TrainConfig, device: torch.device) -> None:
        """Refuse what this family cannot run, and set process-wide switches, before anything is
        seeded, loaded or built."""

    @abstractmethod
    def setup(self, run: RunContext) -> None:
        """Build the model (on ``run.device``), the optimizer and the weight average."""

    @property
    @abstractmethod
    def step(self) -> int:
        """Optimizer steps so far, over the whole run."""

    @abstractmethod
    def train_epoch(self, batches: Iterable[Tuple[Tensor, Tensor]], epoch: int, first_batch: int,
                    after_step: AfterStep) -> Tuple[Dict[str, float], int]:
        """Train on ``batches`` (batch ``first_batch`` on, ``steps_per_epoch`` at most), calling
        ``after_step`` after every step; the epoch's training terms (row columns) and the number
        of images seen."""

    def judged(self) -> nn.Module:
        """The model an epoch is judged (and a best file saved) by: the trained one, its CSC layers'
        step sizes refreshed for their weights as they now are."""
        refresh_step_sizes(self.model)
        return self.model

    @abstractmethod
    def scores(self, model: nn.Module) -> Dict[str, float]:
        """The epoch's test (and held-out) scores of the judged ``model``."""

    def probed(self, model: nn.Module) -> nn.Module:
        """The module whose CSC layers' statistics are recorded on the probe images."""
        return model

    def new_best(self, row: Dict[str, Any], best: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """The new ``best`` record when this epoch is the best so far on held-out data, else None
        (a family that does not select: always None)."""
        return None

    @abstractmethod
    def summary(self, last: Dict[str, Any], best: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """The family's part of the saved model's training summary."""

    def final_model(self) -> nn.Module:
        """What ``model.safetensors`` holds when no best file was selected."""
        return self.model

    def warnings(self) -> List[str]:
        """Notes the training itself raised, added to the result's notes at the end."""
        return []

    def finish(self, model_path: Path) -> Optional[Dict[str, Any]]:
        """After ``model.safetensors`` is written (by the writing process): a family may complete the
        file (the classifier calibrates its lambda rule into it). Returns a report, or None."""
        return None


def same_run(config: TrainConfig, meta: Dict[str, Any], arch: str) -> None:
    """Refuse to resume from the state of another run (another architecture or CSC mode)."""
    if meta.get("arch") != arch or meta.get("csc") != config.csc:
        raise ValueError(f"{config.resume} is the state of a {meta.get('arch')} (csc={meta.get('csc')}) run, "
                         f"not of {arch} (csc={config.csc})")
    stored = stored_config(meta)
    if config.autoencoder:  # the autoencoder's shape: a resume cannot change it
        for key in ("width", "feature_dim", "ctrl_image"):
            if key in stored and stored[key] != getattr(config, key):
                raise ValueError(f"{config.resume} is the state of a run with {key}={stored[key]}, not "
                                 f"{getattr(config, key)}: drop --{key.replace('_', '-')} to resume it")


def write_summary(path: Path, history: List[Dict[str, Any]]) -> None:
    """``summary.csv``: one row per epoch, the metrics' columns and each CSC layer's statistics."""
    columns = [k for k in history[0] if k != "csc_layers"]
    layer_names = sorted(history[-1].get("csc_layers", {}))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns + [f"{n}.{s}" for n in layer_names for s in ("nonzero", "recon_error", "step_size")])
        for row in history:
            layers = row.get("csc_layers", {})
            writer.writerow([row.get(c) for c in columns]
                            + [layers.get(n, {}).get(s) for n in layer_names for s in ("nonzero", "recon_error", "step_size")])


def run_training(config: TrainConfig, family: TaskFamily, progress: Optional[ProgressFn] = None) -> TrainResult:
    """Train ``family``'s model as ``config`` says (see the module docstring); writes into
    ``config.out`` and returns what was trained and measured."""
    config = family.resolved(config.resolved())
    config.validate()
    emit = progress or ignore
    from ..distributed import DistributedContext

    dist = DistributedContext.from_env()
    device = dist.device if dist.active else resolve_device(config.device)
    family.prepare(config, device)
    torch.manual_seed(config.seed)

    data = make_data(config, dist.rank, dist.world_size)
    steps_per_epoch = len(data.train) if config.max_batches is None else min(len(data.train), config.max_batches)
    notes: List[str] = list(data.notes)
    family.setup(RunContext(config, data, device, dist, steps_per_epoch, notes, emit))
    model = family.model
    arch = card_of(model).arch
    parameters = sum(p.numel() for p in model.parameters())

    out = Path(config.out)
    start_epoch, start_batch = 0, 0
    history: List[Dict[str, Any]] = []
    best: Optional[Dict[str, Any]] = None
    resumed_from = None
    if config.resume:
        meta = restore_train_state(config.resume, model, family.optimizer, family.ema, device,
                                   check=lambda meta: same_run(config, meta, arch))
        start_epoch, start_batch, family.step = meta["epoch"], meta["batch"], meta["step"]
        history, best = meta.get("history", []), meta.get("best")
        resumed_from = start_epoch

    def write_state(epoch: int, batch: int) -> None:
        if dist.is_writer:
            save_train_state(out / "state.safetensors", model, family.optimizer, family.ema,
                             {"epoch": epoch, "batch": batch, "step": family.step, "arch": arch,
                              "csc": config.csc, "history": history, "best": best, "config": asdict(config)})

    def checkpoint_mid_epoch(epoch: int, batches_done: int) -> None:
        if config.checkpoint_every and family.step % config.checkpoint_every == 0 and batches_done < steps_per_epoch:
            write_state(epoch, batches_done)

    if dist.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**asdict(config), "csc_version": __version__}, indent=2))
    info = {"dataset": config.dataset, "class_names": data.class_names, "input_size": list(data.input_size)}
    probe = data.probe.to(device)
    emit(TrainStart(arch=arch, parameters=parameters, device=str(device), epochs=config.epochs,
                    steps_per_epoch=steps_per_epoch, start_epoch=start_epoch, train_images=data.train_images,
                    notes=notes))
    started = time.perf_counter()

    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        first_batch = start_batch if epoch == start_epoch else 0
        terms, seen = family.train_epoch(data.train.epoch(epoch, first_batch), epoch, first_batch,
                                         after_step=checkpoint_mid_epoch)
        elapsed = time.perf_counter() - epoch_start
        judged = family.judged()
        row: Dict[str, Any] = {"epoch": epoch + 1, "lr": lr_at(config, max(family.step - 1, 0), steps_per_epoch),
                               **terms, **family.scores(judged), "images_per_s": seen / max(elapsed, 1e-9),
                               "seconds": elapsed}
        row = {**{k: row[k] for k in family.columns if k in row},
               **{k: v for k, v in row.items() if k not in family.columns}}
        if first_batch:  # resumed mid-epoch: the training terms cover the batches run since the resume only
            row["train_from_batch"] = first_batch
        row["csc_layers"] = csc_layer_stats(family.probed(judged), probe)
        history.append(row)
        if dist.is_writer:
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            write_summary(out / "summary.csv", history)
        new_best = family.new_best(row, best)
        if new_best is not None:
            best = new_best
            if dist.is_writer and config.select == "best":
                save(judged, out / "best.safetensors", **info, training={"epoch": epoch + 1, **best})
        emit(family.epoch_event(row))
        write_state(epoch + 1, 0)

    notes += family.warnings()
    seconds = time.perf_counter() - started
    last = dict(history[-1]) if history else {}
    summary = {"arch": arch, "csc": config.csc, "epochs": config.epochs, **family.summary(last, best),
               "seconds": seconds}
    model_path = out / "model.safetensors"
    if dist.is_writer:
        if best is not None and config.select == "best" and (out / "best.safetensors").exists():
            save(load(out / "best.safetensors"), model_path, **info, training=summary)
        else:
            save(family.final_model(), model_path, **info, training=summary)
    writer = dist.is_writer
    dist.close()  # first: the other processes need not wait in the final barrier while the writer calibrates
    finished = family.finish(model_path) if writer else None
    emit(TrainDone(seconds=seconds))
    return TrainResult(out=str(out), model_path=str(model_path), epochs=config.epochs, last=last, best=best,
                       history=history, parameters=parameters, seconds=seconds, resumed_from_epoch=resumed_from,
                       arch=arch, notes=notes, calibration=finished)
