"""The reusable parts of a training loop, for any model a ``csc`` job trains.

The run skeleton (:mod:`csc_cli.jobs.run`) and both task families are built from these: the
learning-rate schedule and optimizer (:func:`lr_at`, :func:`make_optimizer`), the weight average
(:class:`EMA`, whose CSC layers get step sizes for their own weights), one epoch of optimizer steps
on a loss (:class:`StepRunner`), the step-size refresh after an epoch (:func:`refresh_step_sizes`),
the per-layer statistics every epoch records (:func:`csc_layer_stats`) and resumable state
(:func:`save_train_state`, :func:`restore_train_state`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..checkpoint import load_state, save_state
from ..layers import csc_layers
from ..metrics import softmax_kl
from .common import Tally, autocast
from .events import BatchEnd, EpochStart, ProgressFn


def lr_at(config, step: int, steps_per_epoch: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up, then cosine or linear (per
    iteration, down to ``min_lr``), step decay at epoch ``milestones``, or constant."""
    total = config.epochs * steps_per_epoch
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warm:
        return config.lr * (step + 1) / warm
    if config.schedule == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))
    if config.schedule == "linear":  # to min_lr at the end (CTRL: linear decay to 0)
        progress = (step - warm) / max(1, total - warm)
        return config.min_lr + (config.lr - config.min_lr) * max(0.0, 1.0 - progress)
    if config.schedule == "step":
        epoch = step // steps_per_epoch
        return config.lr * config.gamma ** sum(epoch >= m for m in config.milestones)
    return config.lr


def make_optimizer(config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over the trainable parameters, as ``config`` says."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


@torch.no_grad()
def refresh_step_sizes(model: nn.Module) -> None:
    """Give every CSC layer that has trained the step size for its weights as they now are."""
    for layer in csc_layers(model).values():
        if layer.trained_size:
            layer.refresh_step_size()


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


class EMA:
    """An exponential moving average of a model's weights (buffers copied), in eval mode."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
        # by name: the live model's CSC layers gain warm-start buffers (_power_vec, _power_atoms) on their
        # first training forward and the average never does, so a pairing by position would shift
        live = dict(model.named_buffers())
        for name, e in self.model.named_buffers():
            b = live.get(name)
            if b is not None and e.shape == b.shape:
                e.copy_(b)

    @torch.no_grad()
    def refresh_steps_like(self, model: nn.Module) -> nn.Module:
        """Converged step sizes for the averaged weights, at the input sizes ``model``'s CSC layers
        train at (averaged weights are not the trained weights: their L differs); the averaged model."""
        src = csc_layers(model)
        for name, layer in csc_layers(self.model).items():
            size = src[name].trained_size if name in src else None
            if size:
                layer.refresh_step_size(size)
        return self.model


class LambdaJitter:
    """While ``model`` trains, its first CSC layer solves each image at a lambda of its own, drawn
    uniformly from ``[low, high]``: a raised test-time lambda (``--lambda``, ``--lambda auto``) is
    then a setting the network has seen. The draws come from a generator seeded by ``seed`` and
    the run's optimizer step (``step()``), so a resumed run draws exactly what it would have; eval
    forwards (and a lambda given explicitly, such as a calibrated rule's) are left alone."""

    def __init__(self, model: nn.Module, low: float, high: float, *, seed: int, step: Callable[[], int]) -> None:
        layers = csc_layers(model)
        if not layers:
            raise ValueError("--lambda-jitter draws the first CSC layer's lambda, and this model has none: train with "
                             "--csc stem / all, or convert it first (csc convert)")
        if not 0 <= low <= high:
            raise ValueError(f"--lambda-jitter needs 0 <= low <= high, got [{low}, {high}]")
        self.name, layer = next(iter(layers.items()))
        self.low, self.high, self.seed, self.step = float(low), float(high), int(seed), step
        self.handle = layer.register_forward_pre_hook(self._draw, with_kwargs=True)

    def lambdas(self, n: int, step: int) -> Tensor:
        """The ``n`` lambdas (float64) of the batch at optimizer step ``step``."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7 * step + 1)
        return torch.empty(n, dtype=torch.float64).uniform_(self.low, self.high, generator=gen)

    def _draw(self, module: nn.Module, args, kwargs):
        lam_position = 2 if module.transposed else 1  # forward(x, lam) / forward(x, output_size, lam)
        given = kwargs.get("lam") if len(args) <= lam_position else args[lam_position]
        if not module.training or given is not None:
            return None
        x = args[0]
        lam = self.lambdas(x.shape[0] if x.dim() == module._dim + 2 else 1, self.step())
        return args, {**kwargs, "lam": lam.to(device=x.device, dtype=x.dtype)}

    def remove(self) -> None:
        self.handle.remove()


class ReconstructionTerm:
    """The first CSC layer's relative reconstruction error of its input in a training forward,
    ``mean_i ||x_i - D z_i||^2 / ||x_i||^2`` (``z`` the code it passed on, ``D`` its dictionary):
    differentiable in the dictionary and the input, read once per step with :meth:`take`."""

    def __init__(self, model: nn.Module) -> None:
        layers = csc_layers(model)
        if not layers:
            raise ValueError("--reconstruction fits the first CSC layer's dictionary, and this model has none: "
                             "convert it first (csc convert) or train with --csc stem / all")
        self.name, layer = next(iter(layers.items()))
        self.value: Optional[Tensor] = None
        self.handle = layer.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args, output: Tensor) -> None:
        if not module.training:
            return
        x = args[0]
        size = tuple(x.shape[-module._dim:])
        z = module.code_from_output(output, size)
        residual = (x - module.decode(z, size)).flatten(1)
        self.value = (residual.square().sum(1) / x.flatten(1).square().sum(1).clamp_min(1e-12)).mean()

    def take(self) -> Tensor:
        """The term of the last training forward (an error if there was none since the last take)."""
        if self.value is None:
            raise RuntimeError("no training forward through the first CSC layer since the last step")
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        self.handle.remove()


Batch = Tuple[Tensor, Tensor]
#: ``loss(output, target, inputs)``: the objective of one batch (``inputs`` as the model saw them)
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class StepRunner:
    """Optimizer steps over batches: learning rate per step, autocast, (scaled) backward, gradient
    clipping, the EMA update. ``loss(output, target, inputs)`` is the objective (cross-entropy for a
    classifier); ``step`` counts optimizer steps over the whole run; ``after_update(step)`` runs after
    each optimizer step with the new count (e.g. to move the model along its continuation path)."""

    model: nn.Module  # the module whose parameters are clipped and averaged
    train_model: nn.Module  # what the batches go through (the model, or its DDP / compiled wrapper)
    optimizer: torch.optim.Optimizer
    loss: LossFn
    lr: Callable[[int], float]
    device: torch.device
    amp: str = "none"
    channels_last: bool = False
    clip_grad: float = 0.0
    scaler: Optional[Any] = None
    ema: Optional[EMA] = None
    step: int = 0
    after_update: Optional[Callable[[int], None]] = None

    def epoch(self, batches: Iterable[Batch], epoch: int, first_batch: int, limit: int,
              emit: ProgressFn, after_step: Optional[Callable[[int, int], None]] = None) -> Tally:
        """Train on ``batches`` (batch ``first_batch`` on, at most ``limit``); returns this process's
        loss and accuracy counts. ``after_step(epoch, batches_done)`` runs after every step."""
        self.train_model.train()
        tally = Tally()
        started = time.perf_counter()
        emit(EpochStart(epoch=epoch, batches=limit, first_batch=first_batch))
        for b, (x, y) in enumerate(batches, start=first_batch):
            if b >= limit:
                break
            loss, logits, y = self._step(x, y)
            with torch.no_grad():
                tally.add(logits, y, loss_sum=float(loss.detach()) * y.numel())
            emit(BatchEnd(epoch=epoch, batch=b + 1, batches=limit, loss=tally.loss, acc=tally.acc,
                          images_per_s=tally.seen / max(time.perf_counter() - started, 1e-9)))
            if after_step is not None:
                after_step(epoch, b + 1)
        return tally

    def _step(self, x: Tensor, y: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.step)
        with autocast(self.device, self.amp):
            logits = self.train_model(x)
            loss = self.loss(logits, y, x)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        if self.after_update is not None:
            self.after_update(self.step)
        return loss, logits, y


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Hinton et al.'s distillation term: ``T^2 KL(softmax(teacher / T) || softmax(student / T))``,
    averaged over the batch (the ``T^2`` keeps its gradients on the scale of the hard-label loss)."""
    t = float(temperature)
    return softmax_kl(teacher.float(), student.float(), t) * (t * t)


# ----------------------------------------------------------------------------- resumable state
def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: Dict[str, Tensor] = {}
    scalars: Dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: Dict[str, Tensor], meta: Dict[str, Any]) -> None:
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: Optional[EMA],
                     meta: Dict[str, Any]) -> Path:
    """Everything a resumed run needs for an identical next step: the weights, the optimizer, the
    EMA, the random state and the step-size refresh's warm start; ``meta`` (position, history,
    the run's config) as JSON."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    tensors.update(opt_tensors)
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.model.state_dict().items()})
    tensors["rng.torch"] = torch.get_rng_state()
    power_sizes = {}
    for layer_name, layer in csc_layers(model).items():
        warm = layer.warm_state()
        if warm is not None:
            tensors[f"power.{layer_name}"] = warm["vector"]
            tensors[f"power_atoms.{layer_name}"] = warm["atoms"]
            power_sizes[layer_name] = warm["size"].tolist()
    return save_state(path, tensors, {**meta, "optimizer": opt_meta, "power_sizes": power_sizes})


def restore_train_state(path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: Optional[EMA], device,
                        check: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Load what :func:`save_train_state` wrote into ``model``, ``optimizer`` and ``ema`` and set the
    random state; ``check(meta)`` may refuse a state from another run first. Returns the meta."""
    tensors, meta = load_state(path)
    if check is not None:
        check(meta)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    _restore_optimizer(optimizer, {k: v.to(device) for k, v in tensors.items()}, meta["optimizer"])
    if ema is not None and any(k.startswith("ema.") for k in tensors):
        ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}, strict=True)
    torch.set_rng_state(tensors["rng.torch"])
    for layer_name, layer in csc_layers(model).items():
        size = meta.get("power_sizes", {}).get(layer_name)
        vec = tensors.get(f"power.{layer_name}")
        atoms = tensors.get(f"power_atoms.{layer_name}")
        if size and vec is not None and atoms is not None:  # the warm refresh state: an identical next step
            layer.load_warm_state({"vector": vec, "atoms": atoms, "size": torch.tensor(size)})
    return meta
