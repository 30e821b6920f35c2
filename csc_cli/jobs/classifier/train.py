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

import copy
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...checkpoint import load
from ...choices import GAME_OPTIMIZER, OPTIMIZERS
from ...continuation import ContinuationPath, attach, current
from ...layers import csc_layers
from ...data.pipeline import Batches
from ...models import build_model, resolve_arch
from ...surgery import card_of, set_input_normalization
from ..common import accuracy
from ..events import EpochEnd, ProgressFn
from ..run import AfterStep, RunContext, TaskFamily, TrainResult, run_training
from ..train_config import TrainConfig
from ..train_data import DataBundle
from ..training import (EMA, LambdaJitter, ReconstructionTerm, StepRunner, distillation_loss, lr_at,
                        make_optimizer, refresh_step_sizes)

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
        on_path = current(model)
        if on_path is not None:
            raise ValueError(f"{config.init} was saved at step {on_path[1]} of its {on_path[0].steps}-step continuation "
                             "path: resume that run with --resume STATE, or start from the converted model")
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
        game_only = [flag for flag, value, default in (
            ("--width", config.width, None), ("--ctrl-image", config.ctrl_image, "synthesis"), ("--pixel-weight", config.pixel_weight, 0.0),
            ("--feature-weight", config.feature_weight, 0.0), ("--encoder-pixel-weight", config.encoder_pixel_weight, 0.0),
            ("--encoder-steps", config.encoder_steps, 1), ("--ctrl-mode", config.ctrl_mode, "multi"),
            ("--feature-dim", config.feature_dim, 128), ("first_step_dr", config.first_step_dr, False),
            ("eps2", config.eps2, 0.5), ("encoder_beta1", config.encoder_beta1, 0.5),
            ("encoder_beta2", config.encoder_beta2, 0.999), ("decoder_beta1", config.decoder_beta1, 0.5),
            ("decoder_beta2", config.decoder_beta2, 0.999))
            if value != default]
        if game_only:
            raise ValueError(f"{', '.join(game_only)}: options of the CTRL game (autoencoders); a classifier run has "
                             "no such setting (drop them)")
        if config.optimizer == GAME_OPTIMIZER:
            raise ValueError(f"optimizer {GAME_OPTIMIZER!r} is the CTRL game's (autoencoders): a classifier trains "
                             f"with {' or '.join(OPTIMIZERS)}")
        if config.amp != "none" and device.type != "cuda" and config.amp == "fp16":
            raise ValueError("--amp fp16 needs a CUDA device (use bf16 on a CPU)")
        if config.continuation > 0 and config.init is None:
            raise ValueError("--continuation starts from a converted model: give it with --init FILE "
                             "(csc convert MODEL --out FILE)")
        if config.distill > 0 and config.init is None and config.teacher is None:
            raise ValueError("--distill needs a teacher: --teacher FILE, or --init FILE (its model at the start teaches)")
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
        self.path = self._continuation(config, run) if config.continuation > 0 else None
        self.teacher = self._teacher(config, run) if config.distill > 0 else None
        if config.calibrate_lambda and not csc_layers(model):
            raise ValueError("--calibrate-lambda fits a rule for the first CSC layer's lambda, and this model has none: "
                             "add --no-calibrate-lambda (the recipe asks for it), or train with --csc stem / all")
        self.optimizer = make_optimizer(config, model)
        self.ema = EMA(model, config.ema) if config.ema > 0 else None
        # after the teacher and the average are copied from the model: the hook is the trained model's only
        self.jitter = (LambdaJitter(model, *config.lambda_jitter, seed=config.seed, step=lambda: self.runner.step)
                       if config.lambda_jitter else None)
        self.recon = ReconstructionTerm(model) if config.reconstruction > 0 else None
        train_model: nn.Module = run.dist.wrap(model) if run.dist.active else model
        if config.compile:
            train_model = torch.compile(train_model)
        self.runner = StepRunner(model, train_model, self.optimizer, device=run.device, amp=config.amp,
                                 channels_last=config.channels_last, clip_grad=config.clip_grad, ema=self.ema,
                                 scaler=torch.amp.GradScaler("cuda") if config.amp == "fp16" else None,
                                 lr=lambda step: lr_at(config, step, run.steps_per_epoch), loss=self._loss,
                                 after_update=self._after_update if self.path is not None else None)

    # ------------------------------------------------------------------ warm starts
    def _continuation(self, config: TrainConfig, run: RunContext) -> ContinuationPath:
        """The path of the converted --init model, put at its start (the source function); the
        test accuracy there is recorded, so the report says how far the run moved from it."""
        total = config.epochs * run.steps_per_epoch
        path = ContinuationPath(steps=max(1, round(config.continuation * total)), lam=tuple(config.continuation_lam),
                                nonneg=tuple(config.continuation_nonneg), tail=tuple(config.continuation_tail),
                                shape=config.continuation_shape)
        attach(self.model, path, 0)
        self.start_scores = None
        if not config.resume:
            self.start_scores = evaluate(self.model, run.data.test, run.device, config.amp, config.channels_last)
            run.notes.append(f"continuation: {path.steps} of the run's {total} steps move the CSC layers from the source "
                             f"convs to their own settings; at the start (the source function) test accuracy "
                             f"{self.start_scores['acc']:.2%}")
        return path

    def _teacher(self, config: TrainConfig, run: RunContext) -> nn.Module:
        """The distillation teacher, frozen in eval mode: --teacher's model, or the --init model's
        source function -- a converted model (CSC layers in conv units) at the start of a path, which
        is the ConvNet it was converted from; a model without such layers as it is."""
        if config.teacher:
            teacher = load(config.teacher)
        else:
            teacher = copy.deepcopy(self.model)
            layers = csc_layers(teacher)
            if layers and all(layer.units == "conv" for layer in layers.values()):
                attach(teacher, ContinuationPath(steps=1), 0)
        teacher.to(run.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def _after_update(self, step: int) -> None:
        if step <= self.path.steps:  # past its end the path was finished at step == steps: nothing to do
            self._move_along(step)

    def _move_along(self, step: int) -> None:
        attach(self.model, self.path, step)
        if self.ema is not None:
            attach(self.ema.model, self.path, step)

    def _loss(self, logits: Tensor, y: Tensor, x: Tensor) -> Tensor:
        config = self.config
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        if self.recon is not None:
            loss = loss + config.reconstruction * self.recon.take()
        if self.teacher is None:
            return loss
        with torch.no_grad():
            target = self.teacher(x)
        return (1 - config.distill) * loss + config.distill * distillation_loss(logits, target,
                                                                                config.distill_temperature)

    @property
    def step(self) -> int:
        return self.runner.step

    @step.setter
    def step(self, value: int) -> None:
        self.runner.step = value
        if self.path is not None:  # a resumed run: back where the path was
            self._move_along(value)

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
        out = {"last_test_acc": last.get("test_acc"), "selected": self.config.select, "best": best}
        if self.path is not None:
            on_path = current(self.model)
            out["continuation"] = {"steps": self.path.steps, "finished": on_path is None,
                                   "start_test_acc": None if self.start_scores is None else self.start_scores["acc"]}
        if self.teacher is not None:
            out["distill"] = {"weight": self.config.distill, "temperature": self.config.distill_temperature,
                              "teacher": self.config.teacher or "the --init model's source function"}
        return out

    def final_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def finish(self, model_path) -> Optional[Dict[str, Any]]:
        """With ``calibrate_lambda``: the label-free lambda rule calibrated on the run's training
        images and stored in ``model_path`` -- exactly what ``csc eval MODEL --calibrate-lambda
        --calibration-images N --rule R --seed S --in-place`` stores (the same function, on the model
        as saved), so ``csc eval MODEL --lambda auto`` works on the run's output as it is."""
        config = self.config
        if not config.calibrate_lambda:
            return None
        from ..common import resolve_device
        from .evaluate import EvalConfig, calibrate_model_file

        eval_config = EvalConfig(model=str(model_path), dataset=config.dataset, data_dir=config.data_dir,
                                 device=config.device, calibrate_lambda=True, calibration_images=config.calibration_images,
                                 rule=config.calibration_rule, in_place=True, seed=config.seed)
        return calibrate_model_file(eval_config, resolve_device(config.device), self.emit)


def run_classifier_train(config: TrainConfig, progress: Optional[ProgressFn] = None) -> TrainResult:
    """Train a classifier as ``config`` says (see the module docstring)."""
    return run_training(config, ClassifierTraining(), progress)
