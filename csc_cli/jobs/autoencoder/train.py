"""The CTRL game: train an autoencoder (CSC-CTRL, or CTRL itself) by closed-loop transcription.

:func:`csc_cli.jobs.train.run_train` hands a run to :func:`run_ctrl_train` when its ``--arch`` is an
autoencoder (``ctrl_dcgan32``, ``ctrl_resnet``) or its ``--init`` file says it is one. One iteration on
one batch (:class:`GameStep`), as in the CTRL reference code (PAPER.md section 2, "The game"):

1. ``encoder_steps`` encoder steps: ``Z = f(x)``, ``Zh = f(g(Z).detach())``, loss ``-T(Z, Zh)`` (the
   first one ``-dR(Z)`` alone with ``first_step_dr``), stepping the encoder only;
2. one decoder step through the full loop ``f(g(f(x)))``, loss ``+T``, stepping the decoder only.

``T = dR(Z) + dR(Zh) + sum_k dR(Z_k, Zh_k)`` with labels (``ctrl_mode='multi'``), ``T = dR(Z, Zh)``
without (``'binary'``); see :mod:`csc_cli.core.rate`. ``f`` runs separately on ``x`` and on ``g(Z)``,
so BatchNorm sees separate batch statistics; only the real batches f(x) move the encoder's running
statistics (eval mode must normalise real images, not a mix of real and decoded ones).

Sample-wise consistency, departures from the paper's game that are 0 unless asked: ``pixel_weight``
adds ``mean_i sum_pixels (g(f(x_i)) - x_i)^2`` and ``feature_weight`` ``mean_i ||f(x_i) -
f(g(f(x_i)))||^2`` to the decoder's loss; ``encoder_pixel_weight`` adds the pixel term to each encoder
step's loss, through g (whose weights stay put there). Both terms are logged at any weight; under
torchrun they (and ``train_mse``) are the writing rank's own batch, the rates the global batch's.

One Adam holds the two networks as two parameter groups with their own betas (CTRL: (0.5, 0.999)
for the DCGAN nets, (0, 0.9) for the ResNet ones), no weight decay unless asked, the learning rate decayed as ``schedule`` says (the recipes: linearly to
0); the network not being stepped has no gradients, so Adam leaves it (and its moments) alone. The
model takes [0, 1] images (its input normalisation maps them to CTRL's [-1, 1]) and decodes to [0, 1].
Under torchrun the rates are computed on the *global* batch: features are gathered from every rank
with their gradients, and each network's gradients are summed over ranks.

:class:`CTRLGame` is the game's part of a run of the shared skeleton
(:func:`csc_cli.jobs.run.run_training`), which writes what it writes for a classifier
(``config.json``, whose ``optimizer`` says ``adam``; ``metrics.jsonl`` with every term of the game
per epoch; ``summary.csv``; ``state.safetensors`` for an exact resume; ``model.safetensors``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ...autoencoders import build_autoencoder, is_autoencoder
from ...checkpoint import load
from ...choices import GAME_OPTIMIZER
from ...core.rate import coding_rate, ctrl_objective, rate_reduction, small_class_warning
from ...surgery import set_input_normalization
from ..common import autocast
from ..events import BatchEnd, EpochStart, GameEpochEnd, ProgressFn
from ..run import AfterStep, RunContext, TaskFamily, TrainResult, run_training
from ..train_config import TrainConfig
from ..training import lr_at

__all__ = ["run_ctrl_train", "CTRLGame", "GameStep", "reconstruction_scores", "features_of"]

_ROW_KEYS = ("T", "dR_Z", "dR_Zh", "pairwise", "R_Z", "pixel", "feature", "train_mse")


# ----------------------------------------------------------------------------- pieces
def _gather(z: Tensor, dist) -> Tensor:
    """All ranks' rows of ``z``, with gradients flowing back to each rank's own rows."""
    if dist is None or not dist.active:
        return z
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated for a private replacement; it is the autograd-aware gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(z), dim=0)


def _gather_labels(y: Tensor, dist) -> Tensor:
    if dist is None or not dist.active:
        return y
    import torch.distributed as tdist

    parts = [torch.empty_like(y) for _ in range(dist.world_size)]
    tdist.all_gather(parts, y)
    return torch.cat(parts)


def _sum_gradients(params: List[nn.Parameter], dist) -> None:
    """Every rank computed the same global objective, whose backward reached only its own rows:
    the full gradient is the sum over ranks, divided by the number of ranks that each computed
    the (identical) objective."""
    if dist is None or not dist.active:
        return
    import torch.distributed as tdist

    for p in params:
        if p.grad is not None:
            tdist.all_reduce(p.grad, op=tdist.ReduceOp.SUM)
            p.grad.div_(dist.world_size)


def _pixel_term(decoded: Tensor, x: Tensor) -> Tensor:
    """Mean over images of ``sum_pixels (g(f(x)) - x)^2`` ([0, 1] units): sample-wise consistency in
    pixel space."""
    return (decoded.float() - x.float()).square().flatten(1).sum(1).mean()


@contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Inside, ``module``'s BatchNorm layers normalise with batch statistics as usual (training mode)
    but keep their running statistics as they are (momentum 0)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


class GameStep:
    """One iteration of the game on one batch (see the module docstring); returns the decoder
    step's terms as floats and the reconstruction MSE of ``g(f(x))`` in [0, 1] units."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, num_classes: int,
                 device: torch.device, lr, dist=None) -> None:
        self.model, self.optimizer, self.config = model, optimizer, config
        self.num_classes, self.device, self.lr, self.dist = num_classes, device, lr, dist
        self.encoder_params = list(model.encoder.parameters())
        self.decoder_params = list(model.decoder.parameters())
        self.step = 0  # decoder steps (= iterations) so far
        self.warnings: List[str] = []

    def _objective(self, z: Tensor, zh: Tensor, y: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        z, zh = _gather(z, self.dist), _gather(zh, self.dist)
        labels = _gather_labels(y, self.dist) if self.config.ctrl_mode == "multi" else None
        return ctrl_objective(z, zh, labels, self.num_classes, mode=self.config.ctrl_mode, eps2=self.config.eps2)

    def _only(self, train_encoder: bool) -> None:
        for p in self.encoder_params:
            p.requires_grad_(train_encoder)
        for p in self.decoder_params:
            p.requires_grad_(not train_encoder)

    def _apply(self, loss: Tensor, params: List[nn.Parameter]) -> None:
        if not torch.isfinite(loss):
            raise ValueError(f"the game's objective became {float(loss)} at iteration {self.step + 1}: "
                             "lower --lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _sum_gradients(params, self.dist)
        if self.config.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad)
        self.optimizer.step()

    def __call__(self, x: Tensor, y: Tensor) -> Dict[str, float]:
        cfg, model = self.config, self.model
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if cfg.ctrl_mode == "multi" and not self.warnings:
            message = small_class_warning(_gather_labels(y, self.dist), self.num_classes, cfg.feature_dim)
            if message:
                self.warnings.append(message)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.step)
        self._only(train_encoder=True)
        for k in range(cfg.encoder_steps):
            with autocast(self.device, cfg.amp):
                z = model.encode(x)
                if cfg.encoder_pixel_weight:  # g(z) keeps its graph: the pixel term reaches f through g
                    decoded = model.decode(z)
                else:
                    with torch.no_grad():
                        decoded = model.decode(z.detach())
                with _frozen_running_stats(model.encoder):  # eval mode must see real images' statistics
                    zh = model.encode(decoded.detach())
            if k == 0 and cfg.first_step_dr:
                labels = _gather_labels(y, self.dist) if cfg.ctrl_mode == "multi" else None
                zg = _gather(z, self.dist)
                loss = -(rate_reduction(zg, labels, self.num_classes, cfg.eps2).dR if labels is not None
                         else coding_rate(zg, cfg.eps2))
            else:
                loss = -self._objective(z, zh, y)[0]
            if cfg.encoder_pixel_weight:
                loss = loss + cfg.encoder_pixel_weight * _pixel_term(decoded, x)
            self._apply(loss, self.encoder_params)
        self._only(train_encoder=False)
        with autocast(self.device, cfg.amp):
            with torch.no_grad():
                z = model.encode(x)
            decoded = model.decode(z)
            with _frozen_running_stats(model.encoder):
                zh = model.encode(decoded)
        total, terms = self._objective(z, zh, y)
        loss = total
        with torch.set_grad_enabled(bool(cfg.pixel_weight)):  # logged at any weight, a graph only if used
            pixel = _pixel_term(decoded, x)
        with torch.set_grad_enabled(bool(cfg.feature_weight)):  # logged at any weight, a graph only if used
            feature = (zh.float() - z.float()).square().sum(1).mean()
        if cfg.pixel_weight:
            loss = loss + cfg.pixel_weight * pixel
        if cfg.feature_weight:
            loss = loss + cfg.feature_weight * feature
        self._apply(loss, self.decoder_params)
        for p in self.encoder_params:
            p.requires_grad_(True)
        self.step += 1
        out = {k: float(v.detach()) for k, v in terms.items() if v.dim() == 0}
        out.setdefault("pairwise", out.get("T", float("nan")))  # binary mode: T is dR(Z, Zh) itself
        out["T"] = float(total.detach())
        out["pixel"], out["feature"] = float(pixel.detach()), float(feature.detach())
        out["train_mse"] = out["pixel"] / x[0].numel()  # the same squared error, per pixel
        return out


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def features_of(model: nn.Module, images: Tensor, batch_size: int = 256, device=None) -> Tuple[Tensor, Tensor]:
    """``(features, reconstructions)`` of ``images`` in [0, 1] (eval mode; the model's mode is kept)."""
    device = device or next(model.parameters()).device
    was = model.training
    model.eval()
    feats, recons = [], []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device)
            z = model.encode(x)
            feats.append(z.float().cpu())
            recons.append(model.decode(z).float().clamp(0, 1).cpu())
    finally:
        model.train(was)
    return torch.cat(feats), torch.cat(recons)


def reconstruction_scores(images: Tensor, recon: Tensor) -> Dict[str, float]:
    """MSE and PSNR (dB, peak 1; the PSNR of the mean MSE) of reconstructions in [0, 1]."""
    mse = float((recon.float() - images.float()).square().mean())
    return {"mse": mse, "psnr": 10 * math.log10(1.0 / max(mse, 1e-12))}


def _test_scores(model: nn.Module, images: Tensor, labels: Tensor, num_classes: int, eps2: float) -> Dict[str, float]:
    z, recon = features_of(model, images)
    scores = reconstruction_scores(images, recon)
    rr = rate_reduction(z.double(), labels, num_classes, eps2)
    return {"test_mse": scores["mse"], "test_psnr": scores["psnr"], "test_R": float(rr.R), "test_Rc": float(rr.Rc),
            "test_dR": float(rr.dR)}


class _Loop(nn.Module):
    """``g(f(x))`` as one module, so per-layer statistics see the encoder's and the decoder's layers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.decode(self.model.encode(x))


# ----------------------------------------------------------------------------- the job
def _build(config: TrainConfig, in_chans: int, image_size: int) -> nn.Module:
    if config.init:
        model = load(config.init)
        if not is_autoencoder(model):
            raise ValueError(f"{config.init} is a classifier: the CTRL game trains autoencoders")
        return model
    options = {} if config.csc == "none" else dict(lam=config.lam, steps=config.steps, nonneg=config.nonneg,
                                                   mu=config.mu, method=config.method, backward=config.backward,
                                                   image=config.ctrl_image)
    size = image_size if config.arch == "ctrl_resnet" else None
    return build_autoencoder(config.arch, in_chans=in_chans, feature_dim=config.feature_dim, csc=config.csc,
                             image_size=size, width=config.width, **options)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = [{"params": list(model.encoder.parameters()), "betas": (config.encoder_beta1, config.encoder_beta2)},
              {"params": list(model.decoder.parameters()), "betas": (config.decoder_beta1, config.decoder_beta2)}]
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


class CTRLGame(TaskFamily):
    """The CTRL game's part of a training run (see the module docstring)."""

    epoch_event = staticmethod(GameEpochEnd.from_row)
    columns = ("epoch", "lr", *_ROW_KEYS, *(f"{split}_{k}" for split in ("test", "val")
                                           for k in ("mse", "psnr", "R", "Rc", "dR")), "images_per_s", "seconds")

    def resolved(self, config: TrainConfig) -> TrainConfig:
        # what the game steps with, whatever --optimizer says: config.json and the state say so
        return dataclasses.replace(config, optimizer=GAME_OPTIMIZER)

    def prepare(self, config: TrainConfig, device: torch.device) -> None:
        if config.amp == "fp16":
            raise ValueError("the CTRL game runs in float32 or --amp bf16 (no fp16 loss scaling for two networks)")
        if config.select == "best":
            raise ValueError("--select best is for classifiers: an autoencoder run keeps its last epoch "
                             "(--val-split alone reports val_psnr every epoch)")
        if config.continuation or config.distill:
            raise ValueError("--continuation and --distill are for classifiers converted from a ConvNet: the CTRL game "
                             "has neither (drop them)")
        ignored = [flag for flag, value in (
            ("--lambda-jitter", config.lambda_jitter), ("--calibrate-lambda", config.calibrate_lambda),
            ("--noise-augment", config.noise_augment), ("reconstruction", config.reconstruction),
            ("--ema", config.ema), ("--deterministic", config.deterministic), ("--compile", config.compile),
            ("--channels-last", config.channels_last), ("--label-smoothing", config.label_smoothing),
            ("--teacher", config.teacher)) if value]
        if ignored:
            raise ValueError(f"{', '.join(ignored)}: classifier options; the CTRL game (an autoencoder run) has "
                             "no such setting (drop them)")

    def setup(self, run: RunContext) -> None:
        config, data = run.config, run.data
        if config.ctrl_mode == "multi" and data.num_classes < 2:
            raise ValueError("multi mode needs labels of at least 2 classes: use --ctrl-mode binary")
        self.config, self.data, self.device = config, data, run.device
        self.emit, self.steps_per_epoch = run.emit, run.steps_per_epoch
        c, h, w = data.input_size
        model = _build(config, c, h)
        set_input_normalization(model, [0.5] * c, [0.5] * c)  # [0, 1] images -> CTRL's [-1, 1]
        model.to(run.device)
        self.model = model
        self.optimizer = _optimizer(model, config)
        self.game = GameStep(model, self.optimizer, config, data.num_classes, run.device,
                             lr=lambda step: lr_at(config, step, run.steps_per_epoch), dist=run.dist)
        self._splits: Optional[Dict[str, Tuple[Tensor, Tensor]]] = None

    @property
    def step(self) -> int:
        return self.game.step

    @step.setter
    def step(self, value: int) -> None:
        self.game.step = value

    def train_epoch(self, batches: Iterable[Tuple[Tensor, Tensor]], epoch: int, first_batch: int,
                    after_step: AfterStep) -> Tuple[Dict[str, float], int]:
        limit = self.steps_per_epoch
        epoch_start = time.perf_counter()
        self.emit(EpochStart(epoch=epoch, batches=limit, first_batch=first_batch))
        self.model.train()
        sums: Dict[str, float] = {}
        seen = count = 0
        for b, (x, y) in enumerate(batches, start=first_batch):
            if b >= limit:
                break
            terms = self.game(x, y)
            for k in _ROW_KEYS:
                if k in terms:  # binary mode has no dR(Z) / dR(Zh)
                    sums[k] = sums.get(k, 0.0) + terms[k]
            count += 1
            seen += int(x.shape[0])
            self.emit(BatchEnd(epoch=epoch, batch=b + 1, batches=limit, loss=terms["T"], acc=float("nan"),
                               images_per_s=seen / max(time.perf_counter() - epoch_start, 1e-9)))
            after_step(epoch, b + 1)
        # a term the mode does not have is None (JSON null: the state and metrics files refuse NaN)
        return {k: (sums[k] / count if k in sums and count else None) for k in _ROW_KEYS}, seen

    def scores(self, model: nn.Module) -> Dict[str, float]:
        if self._splits is None:  # the scored images, read once (a streamed split: its first TEST_IMAGES)
            self._splits = {"test": _test_split(self.data.test)}
            if self.data.val is not None:
                self._splits["val"] = _test_split(self.data.val)
        scores: Dict[str, float] = {}
        for split, (images, labels) in self._splits.items():
            measured = _test_scores(model, images, labels, self.data.num_classes, self.config.eps2)
            scores.update({f"{split}_{k[5:]}": v for k, v in measured.items()})
        return scores

    def probed(self, model: nn.Module) -> nn.Module:
        return _Loop(model)

    def summary(self, last: Dict[str, Any], best: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        return {"task": "ctrl", "ctrl_mode": self.config.ctrl_mode, "last_test_psnr": last.get("test_psnr"),
                "last_test_dR": last.get("test_dR")}

    def warnings(self) -> List[str]:
        return self.game.warnings


def run_ctrl_train(config: TrainConfig, progress: Optional[ProgressFn] = None) -> TrainResult:
    """Play the game for ``config.epochs`` epochs; the result's ``last``/``history`` rows hold the
    game's terms and the test reconstruction scores."""
    return run_training(config, CTRLGame(), progress)


#: At most this many test images are scored after every epoch (a streamed split: its first ones).
TEST_IMAGES = 10000


def _test_split(batches) -> Tuple[Tensor, Tensor]:
    xs, ys, n = [], [], 0
    for x, y in batches.epoch(0):
        xs.append(x)
        ys.append(y)
        n += int(x.shape[0])
        if n >= TEST_IMAGES:
            break
    return torch.cat(xs)[:TEST_IMAGES], torch.cat(ys)[:TEST_IMAGES]
