"""The train job: SDNet (or plain) models on real datasets, resumable, with honest selection.

``run_train(TrainConfig(...), progress=callback) -> TrainResult``. Writes into ``config.out``
(default ``runs/<dataset>-<arch>-<csc>``): ``config.json`` (the resolved config), ``metrics.jsonl``
(one JSON line per epoch), ``summary.csv``, ``model.safetensors`` (the selected model: the last
epoch, or the best on a held-out split of the training data -- never on the test set) and
``state.safetensors`` (everything needed to resume, the run's config included). The loop is built
from the reusable parts in :mod:`csc_cli.jobs.training`; progress comes as typed events
(:mod:`csc_cli.jobs.events`).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import __version__
from ..checkpoint import load, save
from ..data import load_dataset
from ..data.pipeline import Batches, default_augment, default_pad, split_holdout
from ..data.source import folder_root, is_streamed
from ..layers import csc_layers
from ..models import build_model, resolve_arch
from ..surgery import card_of, set_input_normalization
from .common import accuracy, resolve_device
from .events import EpochEnd, ProgressFn, TrainDone, TrainStart, ignore
from .train_config import TrainConfig
from .training import EMA, StepRunner, lr_at, make_optimizer, refresh_step_sizes, restore_train_state, save_train_state

__all__ = ["TrainConfig", "TrainResult", "run_train", "lr_at", "evaluate", "csc_layer_stats", "make_data",
           "config_fields"]


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

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- helpers
@torch.no_grad()
def csc_layer_stats(model: nn.Module, images: torch.Tensor) -> Dict[str, Dict[str, float]]:
    """Per CSC layer, on ``images`` (eval mode): fraction of non-zero code entries, relative
    reconstruction error ``||x - A z|| / ||x||`` of its input, and its step size."""
    layers = csc_layers(model)
    stats: Dict[str, Dict[str, float]] = {}
    handles = []

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0]
            z = module.code_from_output(output, x.shape[2:])
            residual = x - module.decode(z, x.shape[2:])
            stats[name] = {
                "nonzero": float((z != 0).float().mean()),
                "recon_error": float(residual.norm() / x.norm().clamp_min(1e-12)),
                "step_size": float(module.step_size_for(x.shape[2:])),
            }
        return fn

    for name, layer in layers.items():
        handles.append(layer.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return stats


def evaluate(model: nn.Module, batches: Batches, device, amp: str = "none",
             channels_last: bool = False, dist=None) -> Dict[str, float]:
    """Top-1 accuracy and mean cross-entropy on ``batches`` (eval mode), summed over the processes
    of ``dist`` when given (each then evaluates its own shard)."""
    return accuracy(model, batches.epoch(0), device, amp=amp, channels_last=channels_last, dist=dist).as_dict()


# ----------------------------------------------------------------------------- data
@dataclass
class DataBundle:
    train: Any
    test: Any
    val: Any
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    class_names: List[str]
    input_size: Tuple[int, ...]
    probe: torch.Tensor  # a few test images in [0, 1], for per-layer statistics
    train_images: int
    notes: List[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def make_data(config: TrainConfig, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Training, test and (optional) held-out batches for ``config.dataset``."""
    eval_batch = max(config.batch_size, 128)
    augment = default_augment(config.dataset) if config.augment == "auto" else config.augment
    if is_streamed(config.dataset):
        from ..data.folder import IMAGENET_MEAN, IMAGENET_STD, FolderBatches

        root = folder_root(config.dataset, Path(config.data_dir) if config.data_dir else None)
        if config.dataset == "imagenet" and config.augment == "auto":
            augment = "imagenet"
        size = config.image_size or 224
        common = dict(root=root, image_size=size, seed=config.seed, workers=config.workers)
        train = FolderBatches(split="train", batch_size=config.batch_size, training=True, augment=augment,
                              shuffle=True, drop_last=True, rank=rank, world_size=world_size, **common)
        val = None
        if config.val_split > 0:
            n = len(train.dataset)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 17))
            n_val = max(1, int(round(config.val_split * n)))
            train.subset = order[n_val:]
            val = FolderBatches(split="train", batch_size=eval_batch, subset=order[:n_val], **common)
        test = FolderBatches(split="val", batch_size=eval_batch, **common)
        notes = _keep_a_partial_batch(train, config.batch_size)
        return DataBundle(train, test, val, IMAGENET_MEAN, IMAGENET_STD, train.class_names, (3, size, size),
                          test.head(16), len(train._indices(0)) * world_size, notes)
    root = Path(config.data_dir) if config.data_dir else None
    train_data = load_dataset(config.dataset, "train", root, image_size=config.image_size)
    test_data = load_dataset(config.dataset, "test", root, image_size=config.image_size)
    train_x, train_y = train_data.images, train_data.labels
    val = None
    if config.val_split > 0:
        train_x, train_y, val_x, val_y = split_holdout(train_x, train_y, config.val_split, config.seed)
        val = Batches(val_x, val_y, eval_batch)
    train = Batches(train_x, train_y, config.batch_size, shuffle=True, augment=augment,
                    pad=default_pad(config.dataset, config.image_size), seed=config.seed,
                    drop_last=train_x.shape[0] > config.batch_size, rank=rank, world_size=world_size)
    test = Batches(test_data.images, test_data.labels, eval_batch)
    notes = _keep_a_partial_batch(train, config.batch_size)
    return DataBundle(train, test, val, train_data.mean, train_data.std, train_data.class_names,
                      tuple(train_x.shape[1:]), test_data.images[:64], int(train_x.shape[0]), notes)


def _keep_a_partial_batch(train, batch_size: int) -> List[str]:
    """A training split (per process) smaller than one batch would give zero steps per epoch with
    the last partial batch dropped: train on that partial batch instead, and say so. BatchNorm
    cannot train on a single image, so fewer than two are refused."""
    per_process = int(train._indices(0).shape[0])
    if per_process < 2:
        raise ValueError(f"the training split has {per_process} image(s) per process: training needs at least 2")
    if len(train) > 0:
        return []
    train.drop_last = False
    return [f"the training split has {per_process} images per process, fewer than one batch of {batch_size}: "
            f"each epoch is one step on a partial batch of {per_process} (give a smaller --batch-size)"]


# ----------------------------------------------------------------------------- the job
def run_train(config: TrainConfig, progress: Optional[ProgressFn] = None) -> TrainResult:
    if config.autoencoder or (config.init and _is_autoencoder_file(config.init)):
        from .ctrl_train import run_ctrl_train  # an autoencoder: the CTRL rate-reduction game

        return run_ctrl_train(config, progress)
    config = config.resolved()
    config.validate()
    emit = progress or ignore
    from ..distributed import DistributedContext

    dist = DistributedContext.from_env()
    device = dist.device if dist.active else resolve_device(config.device)
    if config.amp != "none" and device.type != "cuda" and config.amp == "fp16":
        raise ValueError("--amp fp16 needs a CUDA device (use bf16 on a CPU)")
    torch.manual_seed(config.seed)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    data = make_data(config, dist.rank, dist.world_size)
    steps_per_epoch = len(data.train) if config.max_batches is None else min(len(data.train), config.max_batches)
    notes: List[str] = list(data.notes)
    model = _build(config, data, notes)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(config, model)
    ema = EMA(model, config.ema) if config.ema > 0 else None
    train_model: nn.Module = dist.wrap(model) if dist.active else model
    if config.compile:
        train_model = torch.compile(train_model)
    runner = StepRunner(model, train_model, optimizer, device=device, amp=config.amp,
                        channels_last=config.channels_last, clip_grad=config.clip_grad, ema=ema,
                        scaler=torch.amp.GradScaler("cuda") if config.amp == "fp16" else None,
                        lr=lambda step: lr_at(config, step, steps_per_epoch),
                        loss=lambda logits, y: F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing))

    out = Path(config.out)
    start_epoch, start_batch = 0, 0
    history: List[Dict[str, Any]] = []
    best: Optional[Dict[str, Any]] = None
    resumed_from = None
    if config.resume:
        meta = restore_train_state(config.resume, model, optimizer, ema, device,
                                   check=lambda meta: _same_run(config, meta, card_of(model).arch))
        start_epoch, start_batch, runner.step = meta["epoch"], meta["batch"], meta["step"]
        history, best = meta.get("history", []), meta.get("best")
        resumed_from = start_epoch

    def write_state(epoch: int, batch: int) -> None:
        if dist.is_writer:
            save_train_state(out / "state.safetensors", model, optimizer, ema,
                             {"epoch": epoch, "batch": batch, "step": runner.step, "arch": card_of(model).arch,
                              "csc": config.csc, "history": history, "best": best, "config": asdict(config)})

    def checkpoint_mid_epoch(epoch: int, batches_done: int) -> None:
        if config.checkpoint_every and runner.step % config.checkpoint_every == 0 and batches_done < steps_per_epoch:
            write_state(epoch, batches_done)

    if dist.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**asdict(config), "csc_version": __version__}, indent=2))
    info = {"dataset": config.dataset, "class_names": data.class_names, "input_size": list(data.input_size)}
    probe = data.probe.to(device)
    emit(TrainStart(arch=card_of(model).arch, parameters=parameters, device=str(device), epochs=config.epochs,
                    steps_per_epoch=steps_per_epoch, start_epoch=start_epoch, train_images=data.train_images,
                    notes=notes))
    started = time.perf_counter()

    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        first_batch = start_batch if epoch == start_epoch else 0
        tally = runner.epoch(data.train.epoch(epoch, first_batch), epoch, first_batch, steps_per_epoch, emit,
                             after_step=checkpoint_mid_epoch).reduced(dist)
        elapsed = time.perf_counter() - epoch_start
        eval_model = validate_epoch(model, ema)
        row: Dict[str, Any] = {
            "epoch": epoch + 1, "lr": lr_at(config, max(runner.step - 1, 0), steps_per_epoch),
            "train_loss": tally.loss, "train_acc": tally.acc, **_scores(eval_model, data, device, config),
            "images_per_s": tally.seen / max(elapsed, 1e-9), "seconds": elapsed,
        }
        row = {k: row[k] for k in ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                                   "images_per_s", "seconds", "val_loss", "val_acc") if k in row}
        row["csc_layers"] = csc_layer_stats(eval_model, probe)
        history.append(row)
        if dist.is_writer:
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            _write_summary(out / "summary.csv", history)
        if data.val is not None and (best is None or row["val_acc"] > best["val_acc"]):
            best = {"epoch": epoch + 1, "val_acc": row["val_acc"], "test_acc": row["test_acc"]}
            if dist.is_writer and config.select == "best":
                save(eval_model, out / "best.safetensors", **info, training={"epoch": epoch + 1, **best})
        emit(EpochEnd.from_row(row))
        write_state(epoch + 1, 0)

    seconds = time.perf_counter() - started
    last = dict(history[-1]) if history else {}
    summary = {"arch": card_of(model).arch, "csc": config.csc, "epochs": config.epochs,
               "last_test_acc": last.get("test_acc"), "selected": config.select, "best": best,
               "seconds": seconds}
    model_path = out / "model.safetensors"
    if dist.is_writer:
        if config.select == "best" and (out / "best.safetensors").exists():
            save(load(out / "best.safetensors"), model_path, **info, training=summary)
        else:
            save(ema.model if ema is not None else model, model_path, **info, training=summary)
    dist.close()
    emit(TrainDone(seconds=seconds))
    return TrainResult(out=str(out), model_path=str(model_path), epochs=config.epochs, last=last, best=best,
                       history=history, parameters=parameters, seconds=seconds, resumed_from_epoch=resumed_from,
                       arch=card_of(model).arch, notes=notes)


def _is_autoencoder_file(path: str) -> bool:
    from ..checkpoint import read_card

    return read_card(path).task == "autoencoder"


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


def _same_run(config: TrainConfig, meta: Dict[str, Any], arch: str) -> None:
    if meta.get("arch") != arch or meta.get("csc") != config.csc:
        raise ValueError(f"{config.resume} is the state of a {meta.get('arch')} (csc={meta.get('csc')}) run, "
                         f"not of {arch} (csc={config.csc})")


def validate_epoch(model: nn.Module, ema: Optional[EMA]) -> nn.Module:
    """The model an epoch is judged (and saved) by: the trained weights with step sizes refreshed
    for them as they now are, or the EMA with step sizes for its own weights."""
    refresh_step_sizes(model)
    return ema.refresh_steps_like(model) if ema is not None else model


def _scores(model: nn.Module, data: DataBundle, device, config: TrainConfig) -> Dict[str, float]:
    test = evaluate(model, data.test, device, config.amp, config.channels_last)
    scores = {"test_loss": test["loss"], "test_acc": test["acc"]}
    if data.val is not None:
        val = evaluate(model, data.val, device, config.amp, config.channels_last)
        scores.update(val_loss=val["loss"], val_acc=val["acc"])
    return scores


def _write_summary(path: Path, history: List[Dict[str, Any]]) -> None:
    columns = [k for k in history[0] if k != "csc_layers"]
    layer_names = sorted(history[-1].get("csc_layers", {}))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns + [f"{n}.{s}" for n in layer_names for s in ("nonzero", "recon_error", "step_size")])
        for row in history:
            layers = row.get("csc_layers", {})
            writer.writerow([row.get(c) for c in columns]
                            + [layers.get(n, {}).get(s) for n in layer_names for s in ("nonzero", "recon_error", "step_size")])


def config_fields() -> Dict[str, Any]:
    """Field name -> default, for recipes and the CLI."""
    return TrainConfig.defaults()
