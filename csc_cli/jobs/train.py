"""The train job: SDNet (or plain) models on real datasets, resumable, with honest selection.

``run_train(TrainConfig(...), progress=callback) -> TrainResult``. Writes into ``config.out``:
``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON line per epoch), ``summary.csv``,
``model.safetensors`` (the selected model: the last epoch, or the best on a held-out split of the
training data -- never on the test set) and ``state.safetensors`` (everything needed to resume).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import __version__
from . import autocast as _amp_autocast, resolve_device
from ..checkpoint import load, load_state, save, save_state
from ..core import lasso_terms
from ..data import load_dataset
from ..data.source import folder_root, is_streamed
from ..data.pipeline import Batches, default_augment, default_pad, split_holdout
from ..layers import csc_layers
from ..models import build_model, resolve_arch
from ..surgery import card_of, set_input_normalization

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
AMP_MODES = ("none", "bf16", "fp16")
CSC_MODES = ("stem", "all", "none")


@dataclass
class TrainConfig:
    dataset: str = "digits"
    data_dir: Optional[str] = None
    arch: str = "resnet20_cifar"
    csc: str = "stem"
    shortcut: bool = True
    lam: float = 0.1
    steps: int = 2
    nonneg: bool = True
    mu: float = 0.0
    method: str = "fista"
    backward: str = "unrolled"
    epochs: int = 12
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    min_lr: float = 1e-6
    milestones: List[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: str = "auto"
    ema: float = 0.0
    clip_grad: float = 0.0
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    val_split: float = 0.0
    select: str = "last"
    image_size: Optional[int] = None
    out: str = "runs/train"
    init: Optional[str] = None
    resume: Optional[str] = None
    checkpoint_every: int = 0
    workers: int = 2  # loader processes for image folders
    max_batches: Optional[int] = None  # per epoch, for smoke tests

    def validate(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ValueError(message)

        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        need(self.csc in CSC_MODES, f"csc must be one of {', '.join(CSC_MODES)}, got {self.csc!r}")
        need(self.select in ("last", "best"), f"select must be 'last' or 'best', got {self.select!r}")
        need(self.select == "last" or self.val_split > 0,
             "select='best' needs a held-out split of the training data: add --val-split 0.1")
        need(0 <= self.val_split < 1, f"val_split must be in [0, 1), got {self.val_split}")
        need(0 <= self.ema < 1, f"ema decay must be in [0, 1), got {self.ema}")
        need(0 <= self.label_smoothing < 1, f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.warmup_epochs >= 0 and self.weight_decay >= 0 and self.clip_grad >= 0,
             "warmup_epochs, weight_decay and clip_grad must be >= 0")
        need(self.checkpoint_every >= 0, "checkpoint_every must be >= 0")
        out = Path(self.out)
        need(not out.exists() or out.is_dir(), f"output {out} exists and is a file: give a directory")


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


ProgressFn = Callable[[str, Dict[str, Any]], None]


# ----------------------------------------------------------------------------- helpers


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up, then cosine (per
    iteration, down to ``min_lr``), step decay at epoch ``milestones``, or constant."""
    total = config.epochs * steps_per_epoch
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warm:
        return config.lr * (step + 1) / warm
    if config.schedule == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))
    if config.schedule == "step":
        epoch = step // steps_per_epoch
        return config.lr * config.gamma ** sum(epoch >= m for m in config.milestones)
    return config.lr


def _make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


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
            z = output - module.bias.view(-1, *([1] * (output.dim() - 2))) if module.bias is not None else output
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


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, device, amp: str = "none",
             channels_last: bool = False) -> Dict[str, float]:
    """Top-1 accuracy and mean cross-entropy on ``batches`` (eval mode)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    try:
        for x, y in batches.epoch(0):
            x = x.to(device)  # raw [0, 1]: the model normalises its own input
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device)
            with _amp_autocast(device, amp):
                logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += y.numel()
    finally:
        model.train(was_training)
    return {"acc": correct / max(total, 1), "loss": loss_sum / max(total, 1), "n": total}




@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        if e.shape == b.shape:
            e.copy_(b)


@torch.no_grad()
def _refresh_steps_like(target: nn.Module, source: nn.Module) -> None:
    """Give ``target``'s CSC layers converged step sizes for their own weights, at the input sizes
    ``source``'s layers are trained at (EMA weights are not the trained weights: their L differs)."""
    src = csc_layers(source)
    for name, layer in csc_layers(target).items():
        size = src[name].trained_size if name in src else None
        if size:
            layer.refresh_step_size(size)


# ----------------------------------------------------------------------------- state
def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


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
        return DataBundle(train, test, val, IMAGENET_MEAN, IMAGENET_STD, train.class_names, (3, size, size),
                          test.head(16), len(train._indices(0)) * world_size)
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
    return DataBundle(train, test, val, train_data.mean, train_data.std, train_data.class_names,
                      tuple(train_x.shape[1:]), test_data.images[:64], int(train_x.shape[0]))


# ----------------------------------------------------------------------------- the job
def run_train(config: TrainConfig, progress: Optional[ProgressFn] = None) -> TrainResult:
    config.validate()
    emit = progress or (lambda kind, info: None)
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

    # ---- data
    data = make_data(config, dist.rank, dist.world_size)
    mean, std = data.mean, data.std
    train_batches, test_batches, val_batches = data.train, data.test, data.val
    steps_per_epoch = len(train_batches) if config.max_batches is None else min(len(train_batches), config.max_batches)

    # ---- model
    notes: List[str] = []
    in_chans = data.input_size[0]
    csc_options = dict(lam=config.lam, steps=config.steps, nonneg=config.nonneg, mu=config.mu,
                       method=config.method, backward=config.backward)
    if config.init:
        model = load(config.init)
        if getattr(model, "num_classes", data.num_classes) != data.num_classes:
            model.reset_classifier(data.num_classes)
            card_of(model).model_kwargs["num_classes"] = data.num_classes
    else:
        arch, arch_note = resolve_arch(config.arch, min(data.input_size[1:]))
        notes += [arch_note] if arch_note else []
        model = build_model(arch, data.num_classes, csc=config.csc, shortcut=config.shortcut,
                            in_chans=in_chans if in_chans != 3 else None, **csc_options)
    set_input_normalization(model, mean, std)  # the model takes raw [0, 1] images, here and once saved
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = _make_optimizer(config, model)
    ema = copy.deepcopy(model).eval() if config.ema > 0 else None
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
    train_model: nn.Module = model
    if dist.active:
        train_model = dist.wrap(model)
    if config.compile:
        train_model = torch.compile(train_model)

    # ---- resume
    out = Path(config.out)
    start_epoch, start_batch, step = 0, 0, 0
    history: List[Dict[str, Any]] = []
    best: Optional[Dict[str, Any]] = None
    resumed_from = None
    if config.resume:
        tensors, meta = load_state(config.resume)
        if meta.get("arch") != card_of(model).arch or meta.get("csc") != config.csc:
            raise ValueError(f"{config.resume} is the state of a {meta.get('arch')} (csc={meta.get('csc')}) run, "
                             f"not of {card_of(model).arch} (csc={config.csc})")
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(model_state, strict=True)
        _restore_optimizer(optimizer, {k: v.to(device) for k, v in tensors.items()}, meta["optimizer"])
        if ema is not None and any(k.startswith("ema.") for k in tensors):
            ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, strict=True)
        torch.set_rng_state(tensors["rng.torch"])
        start_epoch, start_batch, step = meta["epoch"], meta["batch"], meta["step"]
        history, best = meta.get("history", []), meta.get("best")
        resumed_from = start_epoch
        for layer_name, layer in csc_layers(model).items():
            size = meta.get("power_sizes", {}).get(layer_name)
            vec = tensors.get(f"power.{layer_name}")
            atoms = tensors.get(f"power_atoms.{layer_name}")
            if size and vec is not None and atoms is not None:  # the warm refresh state: an identical next step
                layer.load_warm_state({"vector": vec, "atoms": atoms, "size": torch.tensor(size)})

    def write_state(epoch: int, batch: int) -> None:
        if not dist.is_writer:
            return
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        if ema is not None:
            tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
        tensors["rng.torch"] = torch.get_rng_state()
        power_sizes = {}
        for layer_name, layer in csc_layers(model).items():
            warm = layer.warm_state()
            if warm is not None:
                tensors[f"power.{layer_name}"] = warm["vector"]
                tensors[f"power_atoms.{layer_name}"] = warm["atoms"]
                power_sizes[layer_name] = warm["size"].tolist()
        meta = {"epoch": epoch, "batch": batch, "step": step, "arch": card_of(model).arch, "csc": config.csc,
                "optimizer": opt_meta, "history": history, "best": best, "config": asdict(config),
                "power_sizes": power_sizes}
        save_state(out / "state.safetensors", tensors, meta)

    if dist.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({**asdict(config), "csc_version": __version__}, indent=2))
    info = {"dataset": config.dataset, "class_names": data.class_names, "input_size": list(data.input_size)}
    probe = data.probe.to(device)
    emit("start", {"parameters": parameters, "steps_per_epoch": steps_per_epoch, "epochs": config.epochs,
                   "device": str(device), "start_epoch": start_epoch, "train_images": data.train_images,
                   "arch": card_of(model).arch, "notes": notes})
    started = time.perf_counter()

    for epoch in range(start_epoch, config.epochs):
        train_model.train()
        seen = correct = 0
        loss_sum = 0.0
        epoch_start = time.perf_counter()
        first_batch = start_batch if epoch == start_epoch else 0
        emit("epoch_start", {"epoch": epoch, "batches": steps_per_epoch, "first_batch": first_batch})
        for b, (x, y) in enumerate(train_batches.epoch(epoch, first_batch), start=first_batch):
            if b >= steps_per_epoch:
                break
            x = x.to(device, non_blocking=True)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, step, steps_per_epoch)
            with _amp_autocast(device, config.amp):
                logits = train_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if config.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if ema is not None:
                _ema_update(ema, model, config.ema)
            step += 1
            with torch.no_grad():
                n = y.numel()
                seen += n
                loss_sum += float(loss.detach()) * n
                correct += int((logits.argmax(1) == y).sum())
            emit("batch", {"epoch": epoch, "batch": b + 1, "batches": steps_per_epoch, "loss": loss_sum / seen,
                           "acc": correct / seen, "images_per_s": seen / max(time.perf_counter() - epoch_start, 1e-9)})
            if config.checkpoint_every and step % config.checkpoint_every == 0 and b + 1 < steps_per_epoch:
                write_state(epoch, b + 1)
        totals = dist.sum([loss_sum, correct, seen])
        train_loss, train_acc = totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1)
        elapsed = time.perf_counter() - epoch_start
        for layer in csc_layers(model).values():  # the step for the weights as they now are
            if layer.trained_size:
                layer.refresh_step_size()
        eval_model = model
        if ema is not None:
            _refresh_steps_like(ema, model)
            eval_model = ema
        test = evaluate(eval_model, test_batches, device, config.amp, config.channels_last)
        row: Dict[str, Any] = {
            "epoch": epoch + 1, "lr": lr_at(config, max(step - 1, 0), steps_per_epoch),
            "train_loss": train_loss, "train_acc": train_acc, "test_loss": test["loss"], "test_acc": test["acc"],
            "images_per_s": totals[2] / max(elapsed, 1e-9), "seconds": elapsed,
        }
        if val_batches is not None:
            val = evaluate(eval_model, val_batches, device, config.amp, config.channels_last)
            row.update(val_loss=val["loss"], val_acc=val["acc"])
        row["csc_layers"] = csc_layer_stats(eval_model, probe)
        history.append(row)
        if dist.is_writer:
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
            _write_summary(out / "summary.csv", history)
        if val_batches is not None and (best is None or row["val_acc"] > best["val_acc"]):
            best = {"epoch": epoch + 1, "val_acc": row["val_acc"], "test_acc": row["test_acc"]}
            if dist.is_writer and config.select == "best":
                save(eval_model, out / "best.safetensors", **info, training={"epoch": epoch + 1, **best})
        emit("epoch_end", row)
        write_state(epoch + 1, 0)

    seconds = time.perf_counter() - started
    last = dict(history[-1]) if history else {}
    summary = {"arch": card_of(model).arch, "csc": config.csc, "epochs": config.epochs,
               "last_test_acc": last.get("test_acc"), "selected": config.select, "best": best,
               "seconds": seconds}
    final_model = ema if ema is not None else model
    model_path = out / "model.safetensors"
    if dist.is_writer:
        if config.select == "best" and (out / "best.safetensors").exists():
            best_model = load(out / "best.safetensors")
            save(best_model, model_path, **info, training=summary)
        else:
            save(final_model, model_path, **info, training=summary)
    dist.close()
    emit("done", {"seconds": seconds})
    return TrainResult(out=str(out), model_path=str(model_path), epochs=config.epochs, last=last, best=best,
                       history=history, parameters=parameters, seconds=seconds, resumed_from_epoch=resumed_from,
                       arch=card_of(model).arch, notes=notes)


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
    return {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(TrainConfig)}
