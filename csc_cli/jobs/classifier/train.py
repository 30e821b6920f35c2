"""Training a classifier: SDNet (or plain) models on real datasets, with honest selection.

:class:`ClassifierTraining` is the classifier's part of a run of the shared skeleton
(:func:`csc_cli.jobs.run.run_training`, which writes ``config.json``, ``metrics.jsonl``,
``summary.csv``, ``state.safetensors`` and the model files): the model (``--init``'s file resized to
the data, or ``--arch`` built with CSC layers), SGD or AdamW, an optional weight average (EMA),
cross-entropy steps (:class:`~csc_cli.jobs.training.StepRunner`), test accuracy per epoch and, with a
held-out split of the training data, selection of the best epoch on it -- never on the test set
(``best.safetensors``; ``model.safetensors`` is that epoch's with ``select='best'``, else the last).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...checkpoint import load
from ...choices import GAME_OPTIMIZER, OPTIMIZERS
from ...data.pipeline import Batches
from ...models import build_model, resolve_arch
from ...surgery import card_of, set_input_normalization
from ..common import accuracy
from ..events import EpochEnd, ProgressFn
from ..run import AfterStep, RunContext, TaskFamily, TrainResult, run_training
from ..train_config import TrainConfig
from ..train_data import DataBundle
from ..training import EMA, StepRunner, lr_at, make_optimizer, refresh_step_sizes

__all__ = ["ClassifierTraining", "run_classifier_train", "evaluate", "validate_epoch"]


def evaluate(model: nn.Module, batches: Batches, device, amp: str = "none",
             channels_last: bool = False, dist=None) -> Dict[str, float]:
    """Top-1 accuracy and mean cross-entropy on ``batches`` (eval mode), summed over the processes
    of ``dist`` when given (each then evaluates its own shard)."""
    return accuracy(model, batches.epoch(0), device, amp=amp, channels_last=channels_last, dist=dist).as_dict()


def validate_epoch(model: nn.Module, ema: Optional[EMA]) -> nn.Module:
    """The model an epoch is judged (and saved) by: the trained weights with step sizes refreshed
    for them as they now are, or the EMA with step sizes for its own weights."""
    refresh_step_sizes(model)
    return ema.refresh_steps_like(model) if ema is not None else model


def _build(config: TrainConfig, data: DataBundle, notes: List[str]) -> nn.Module:
    """The model to train: ``--init``'s file (classifier resized to the data), or ``--arch`` built
    with CSC layers; it takes raw [0, 1] images (its input normalisation is part of it)."""
    if config.init:
        model = load(config.init)
        if getattr(model, "num_classes", data.num_classes) != data.num_classes:
            model.reset_classifier(data.num_classes)
            card_of(model).model_kwargs["num_classes"] = data.num_classes
    else:
        in_chans = data.input_size[0]
        arch, arch_note = resolve_arch(config.arch, min(data.input_size[1:]))
        notes += [arch_note] if arch_note else []
        model = build_model(arch, data.num_classes, csc=config.csc, shortcut=config.shortcut,
                            in_chans=in_chans if in_chans != 3 else None, lam=config.lam, steps=config.steps,
                            nonneg=config.nonneg, mu=config.mu, method=config.method, backward=config.backward)
    set_input_normalization(model, data.mean, data.std)  # here and once saved
    return model


class ClassifierTraining(TaskFamily):
    """Cross-entropy training of a classifier (see the module docstring)."""

    epoch_event = staticmethod(EpochEnd.from_row)
    columns = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "images_per_s", "seconds",
               "val_loss", "val_acc")

    def prepare(self, config: TrainConfig, device: torch.device) -> None:
        if config.optimizer == GAME_OPTIMIZER:
            raise ValueError(f"optimizer {GAME_OPTIMIZER!r} is the CTRL game's (autoencoders): a classifier trains "
                             f"with {' or '.join(OPTIMIZERS)}")
        if config.amp != "none" and device.type != "cuda" and config.amp == "fp16":
            raise ValueError("--amp fp16 needs a CUDA device (use bf16 on a CPU)")
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    def setup(self, run: RunContext) -> None:
        config = self.config = run.config
        self.data, self.device = run.data, run.device
        self.emit, self.dist, self.steps_per_epoch = run.emit, run.dist, run.steps_per_epoch
        model = _build(config, run.data, run.notes)
        model.to(run.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = make_optimizer(config, model)
        self.ema = EMA(model, config.ema) if config.ema > 0 else None
        train_model: nn.Module = run.dist.wrap(model) if run.dist.active else model
        if config.compile:
            train_model = torch.compile(train_model)
        self.runner = StepRunner(model, train_model, self.optimizer, device=run.device, amp=config.amp,
                                 channels_last=config.channels_last, clip_grad=config.clip_grad, ema=self.ema,
                                 scaler=torch.amp.GradScaler("cuda") if config.amp == "fp16" else None,
                                 lr=lambda step: lr_at(config, step, run.steps_per_epoch),
                                 loss=lambda logits, y: F.cross_entropy(logits.float(), y,
                                                                        label_smoothing=config.label_smoothing))

    @property
    def step(self) -> int:
        return self.runner.step

    @step.setter
    def step(self, value: int) -> None:
        self.runner.step = value

    def train_epoch(self, batches: Iterable[Tuple[Tensor, Tensor]], epoch: int, first_batch: int,
                    after_step: AfterStep) -> Tuple[Dict[str, float], int]:
        tally = self.runner.epoch(batches, epoch, first_batch, self.steps_per_epoch, self.emit,
                                  after_step=after_step).reduced(self.dist)
        return {"train_loss": tally.loss, "train_acc": tally.acc}, tally.seen

    def judged(self) -> nn.Module:
        return validate_epoch(self.model, self.ema)

    def scores(self, model: nn.Module) -> Dict[str, float]:
        config = self.config
        test = evaluate(model, self.data.test, self.device, config.amp, config.channels_last)
        scores = {"test_loss": test["loss"], "test_acc": test["acc"]}
        if self.data.val is not None:
            val = evaluate(model, self.data.val, self.device, config.amp, config.channels_last)
            scores.update(val_loss=val["loss"], val_acc=val["acc"])
        return scores

    def new_best(self, row: Dict[str, Any], best: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        if self.data.val is not None and (best is None or row["val_acc"] > best["val_acc"]):
            return {"epoch": row["epoch"], "val_acc": row["val_acc"], "test_acc": row["test_acc"]}
        return None

    def summary(self, last: Dict[str, Any], best: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        return {"last_test_acc": last.get("test_acc"), "selected": self.config.select, "best": best}

    def final_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.model


def run_classifier_train(config: TrainConfig, progress: Optional[ProgressFn] = None) -> TrainResult:
    """Train a classifier as ``config`` says (see the module docstring)."""
    return run_training(config, ClassifierTraining(), progress)
