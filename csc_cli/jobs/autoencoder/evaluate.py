"""The eval job for autoencoders (CTRL / CSC-CTRL): reconstruction, features, sparse coding as a denoiser.

``run_ae_eval(AEEvalConfig(...), progress) -> AEEvalResult``, on the test split of the model's
dataset (or ``data``, another dataset with the same channels: transfer), a seeded subset of ``n``:

* reconstruction of ``g(f(x))`` against ``x``: MSE, PSNR (dB, peak 1), SSIM (Wang et al. 2004; see
  :mod:`csc_cli.metrics`);
* nearest-subspace accuracy of the features (the CTRL authors' evaluation, PAPER.md section 2):
  per-class principal subspaces (``components``, 10) of the *training* split's features, centred
  (PCA) and uncentred (SVD); only on the model's own dataset (a transfer has other classes);
* ``R``, ``Rc``, ``dR`` of the test features (``eps2`` 0.5) with the data's labels;
* a lambda sweep on every *encoder* CSC layer at once: the PSNR of ``g(f(x + noise))`` against the
  clean ``x`` (noise ``N(0, noise^2)``, seeded, clamped to [0, 1]) for each lambda of the grid and at
  the trained lambdas (the decoder keeps its own); skipped for a model without encoder CSC layers;
* lambda chosen per input (``auto``): with ``calibrate_lambda``, the label-free rules of
  :mod:`csc_cli.robust.rules` fitted on noisy *training* images (for each noise level the grid lambda
  with the best PSNR against the clean image; the statistics of the first encoder CSC layer's input),
  one stored (``rule``; ``best``: the highest mean PSNR on a held-out half) in a new model file; a
  stored rule is always reported next to the trained lambdas and the oracle (the grid's best on the
  test images, labelled so), on the noisy and on the clean test images;
* with ``fid_weights``: FID of the reconstructions against the originals (Inception-v3 pool features,
  :func:`csc_cli.metrics.inception_net`) on the same images.
"""

from __future__ import annotations

import csv as csvlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...autoencoders import check_trained
from ...checkpoint import load, read_card, save
from ...core.rate import rate_reduction
from ...data.source import open_split
from ...layers import csc_layers
from ...metrics import fid, fid_features, fit_subspaces, inception_net, nearest_subspace, psnr, ssim
from ...robust.lam import lambda_override
from ...robust.rules import (CalibrationLevel, LambdaRule, calibrate, check_rule_name, fit_share, layer_inputs,
                            rule_from_dict)
from ..common import resolve_device
from .train import features_of
from ..events import ProgressFn, Step, ignore

__all__ = ["AEEvalConfig", "AEEvalResult", "run_ae_eval", "write_sweep_csv", "DEFAULT_LAMBDA_GRID"]

DEFAULT_LAMBDA_GRID = (0.05, 0.1, 0.2, 0.4)
CALIBRATION_NOISES = (0.05, 0.1, 0.2, 0.3)  # Gaussian sigmas (in [0, 1] image units) of the calibration levels
STREAMED_SAMPLE = 5000  # images held in memory from a dataset read from image files (test and train)


@dataclass
class AEEvalConfig:
    model: str
    data: Optional[str] = None  # default: the model's dataset; another one is a transfer
    data_dir: Optional[str] = None
    n: Optional[int] = None  # a seeded subset of the test split
    noise: float = 0.1  # sigma of the Gaussian noise of the lambda sweep, in [0, 1] image units
    lambda_grid: List[float] = field(default_factory=lambda: list(DEFAULT_LAMBDA_GRID))
    fid_weights: Optional[str] = None
    components: int = 10  # nearest subspace: principal components per class
    train_images: Optional[int] = None  # training images for the subspaces (None: the whole split)
    eps2: float = 0.5
    batch_size: int = 256
    device: str = "auto"
    csv: Optional[str] = None  # the lambda sweep's rows
    calibrate_lambda: bool = False
    rule: str = "best"  # the rule --calibrate-lambda stores: best (held-out PSNR) or a name of RULES
    calibration_images: int = 512
    calibration_noises: List[float] = field(default_factory=lambda: list(CALIBRATION_NOISES))
    out: Optional[str] = None  # the calibrated model file (default: <model>.calibrated.safetensors)
    in_place: bool = False
    seed: int = 0


@dataclass
class AEEvalResult:
    model: str
    dataset: str
    transfer: bool
    images: int
    reconstruction: Dict[str, float]
    rate: Dict[str, float]
    nearest_subspace: Optional[Dict[str, Any]] = None
    denoising: Optional[Dict[str, Any]] = None
    calibration: Optional[Dict[str, Any]] = None
    fid: Optional[Dict[str, Any]] = None
    notes: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- data
def _indices(split, n: Optional[int], seed: int, notes: List[str], what: str) -> Tensor:
    idx = split.sample(n, seed)
    if idx is None and split.streamed and len(split) > STREAMED_SAMPLE:
        idx = split.sample(STREAMED_SAMPLE, seed)
        notes.append(f"{split.name} {what} is read from image files: a seeded sample of {STREAMED_SAMPLE} images")
    return idx if idx is not None else torch.arange(len(split))


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def _fit(images: Tensor, channels: int, size: int, name: str, convert: bool = False) -> Tensor:
    """``images`` at the model's input size (bilinear). Another number of channels is refused, except
    with ``convert`` (a transfer): gray images are repeated to RGB, RGB images become their BT.601 luma."""
    have = images.shape[1]
    if have != channels and convert and (have, channels) == (1, 3):
        images = images.repeat(1, 3, 1, 1)
    elif have != channels and convert and (have, channels) == (3, 1):
        images = (images * images.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif have != channels:
        raise ValueError(f"{name} has {have}-channel images and the model reads {channels}-channel "
                         f"ones: evaluate on a dataset with {channels} channel(s)")
    if tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                               antialias=min(images.shape[-2:]) > size).clamp(0, 1)
    return images


def _calibrated_path(config: AEEvalConfig) -> Path:
    """--out, else the model itself only with --in-place, else a new file beside it."""
    if config.out and config.in_place:
        raise ValueError("give either --out or --in-place, not both")
    model = Path(config.model)
    return Path(config.out) if config.out else model if config.in_place else model.with_name(
        f"{model.stem}.calibrated.safetensors")


def _check(config: AEEvalConfig) -> None:
    if config.n is not None and config.n < 2:
        raise ValueError(f"--n must be >= 2, got {config.n}")
    if not config.noise >= 0:
        raise ValueError(f"--noise must be >= 0, got {config.noise}")
    if not config.lambda_grid or any(not v >= 0 for v in config.lambda_grid):
        raise ValueError(f"--lambda-grid needs lambdas >= 0, got {config.lambda_grid}")
    if config.components < 1:
        raise ValueError(f"components must be >= 1, got {config.components}")


# ----------------------------------------------------------------------------- parts
def _subspace_accuracy(model, card, config: AEEvalConfig, z: Tensor, labels: Tensor, num_classes: int,
                       device, notes: List[str], emit: ProgressFn) -> Dict[str, Any]:
    train = open_split(card.data.dataset, "train", config.data_dir, image_size=model.image_size,
                       resize=card.data.resize)
    idx = _indices(train, config.train_images, config.seed + 1, notes, "training split")
    x, y = train.take(idx)
    x = _fit(x, model.in_chans, model.image_size, train.name)
    z_train, _ = features_of(model, x, config.batch_size, device)
    emit(Step("subspaces", 1, 1, f"{x.shape[0]} training features"))
    out: Dict[str, Any] = {"components": config.components, "train_images": int(x.shape[0])}
    for key, centred in (("centred", True), ("uncentred", False)):
        spaces = fit_subspaces(z_train, y, num_classes, config.components, centred=centred)
        pred, _ = nearest_subspace(spaces, z)
        out[key] = float((pred == labels).double().mean())
        out[f"{key}_dims"] = [None if b is None else int(b.shape[1]) for b in spaces.bases]
    return out


def _noisy(images: Tensor, sigma: float, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=gen)).clamp(0, 1)


def _encoder_layers(model) -> List[str]:
    return [n for n in csc_layers(model) if n.startswith("encoder.")]


def _denoising(model, config: AEEvalConfig, images: Tensor, device, emit: ProgressFn,
               rules: Optional[Dict[str, LambdaRule]] = None, stored: Optional[str] = None) -> Dict[str, Any]:
    names = _encoder_layers(model)
    layers = csc_layers(model)
    trained = {n: float(layers[n].lam) for n in names}
    noisy = _noisy(images, config.noise, config.seed + 7)

    def score(x: Tensor = noisy) -> Dict[str, float]:
        _, recon = features_of(model, x, config.batch_size, device)
        return {"psnr": psnr(recon, images), "ssim": ssim(recon, images)}

    at_trained = score()
    rows = []
    for i, lam in enumerate(config.lambda_grid):
        with lambda_override(model, {n: lam for n in names}):
            rows.append({"lambda": float(lam), **score()})
        emit(Step("lambda sweep", i + 1, len(config.lambda_grid), f"lambda {lam:g}"))
    restored = {n: float(layers[n].lam) for n in names}
    if restored != trained:  # lambda_override restores; a failure here is a bug, not a user error
        raise RuntimeError(f"the sweep did not restore the trained lambdas: {restored} != {trained}")
    best = max(rows, key=lambda r: r["psnr"])
    auto = {}
    for name, rule in (rules or {}).items():
        with rule.applied(model):
            noisy_score, clean_score = score(), score(images)
        auto[name] = {**noisy_score, "clean_psnr": clean_score["psnr"], "clean_ssim": clean_score["ssim"],
                      "stored": name == stored, "formula": rule.describe(), "fitted_on": rule.fitted_on}
    return {"noise": config.noise, "layers": names, "trained_lambdas": trained, "trained": at_trained,
            "rows": rows, "best_lambda": best["lambda"], "best_psnr": best["psnr"],
            "oracle_label": "oracle: the grid's best lambda on these test images (not deployable)",
            "noisy_input_psnr": psnr(noisy, images), "auto": auto}


def calibrate_ae_lambda(model, card, config: AEEvalConfig, device, emit: ProgressFn
                        ) -> Tuple[LambdaRule, Dict[str, LambdaRule], Dict[str, Any]]:
    """Fit the label-free rules for the encoder's CSC layers (one lambda(x) for all of them) on
    noisy training images; returns the stored rule, every fitted rule and a report."""
    names = _encoder_layers(model)
    if not names:
        raise ValueError("--calibrate-lambda needs CSC layers in the encoder: this autoencoder is CTRL (--csc none)")
    check_rule_name(config.rule)
    layer = csc_layers(model)[names[0]]
    reference = float(layer.lam)
    train = open_split(card.data.dataset, "train", config.data_dir, image_size=model.image_size,
                       resize=card.data.resize)
    idx = train.sample(config.calibration_images, config.seed + 1)
    x, _ = train.take(idx if idx is not None else torch.arange(len(train)))
    x = _fit(x, model.in_chans, model.image_size, train.name)
    half = fit_share(x.shape[0], config.rule)
    grid = list(config.lambda_grid)
    noises = [0.0] + [float(v) for v in config.calibration_noises]
    levels = []
    for i, sigma in enumerate(noises):
        xn = _noisy(x, sigma, config.seed + 11 + i) if sigma else x
        levels.append(CalibrationLevel("gaussian_noise" if sigma else "clean", i, (xn[:half], x[:half]),
                                       (xn[half:], x[half:])))

    def denoised_psnr(part) -> float:
        return psnr(features_of(model, part[0], config.batch_size, device)[1], part[1])

    def grid_psnr(part) -> List[float]:
        scores = []
        for lam in grid:
            with lambda_override(model, {n: lam for n in names}):
                scores.append(denoised_psnr(part))
        return scores

    rules, rows, selection, chosen = calibrate(
        model, names[0], grid, levels, grid_scores=grid_psnr, score=denoised_psnr,
        layer_batches=lambda part: layer_inputs(model, layer, part[0], device, config.batch_size),
        rule=config.rule, shared_with=names[1:], progress=lambda i, n, what: emit(Step("calibrate", i, n, what)))
    for row, sigma in zip(rows, noises):
        row["noise"] = sigma
    report = {"layers": names, "reference_lam": reference, "grid": grid, "levels": rows, "images": int(half),
              "held_out_images": int(x.shape[0] - half), "noises": list(config.calibration_noises),
              "rule": chosen, "rules": {n: {**r.to_dict(), "formula": r.describe()} for n, r in rules.items()},
              "selection": selection, "score": "PSNR of g(f(x + noise)) against x (dB)"}
    return rules[chosen], rules, report


def _fid(net, images: Tensor, recon: Tensor, device, batch_size: int) -> Dict[str, Any]:
    f1 = fid_features(images, net, batch_size=min(batch_size, 64), device=device)
    f2 = fid_features(recon, net, batch_size=min(batch_size, 64), device=device)
    return {"fid": fid(f1, f2), "images": int(images.shape[0]), "features": int(f1.shape[1]),
            "protocol": "Inception-v3 pool features (2048-d), [0, 1] images resized to 299x299 bilinear and "
                        "mapped to [-1, 1], eval mode; reconstructions vs the originals"}


# ----------------------------------------------------------------------------- the job
def run_ae_eval(config: AEEvalConfig, progress: Optional[ProgressFn] = None) -> AEEvalResult:
    """Evaluate an autoencoder model file (see the module docstring)."""
    emit = progress or ignore
    _check(config)
    card = read_card(config.model)
    if card.task != "autoencoder":
        raise ValueError(f"{config.model} is a {card.task}, not an autoencoder")
    own = card.data.dataset
    dataset = config.data or own
    if not dataset:
        raise ValueError("the model file does not say which dataset it was trained on: give --data")
    transfer = own is None or dataset != own
    target = _calibrated_path(config) if config.calibrate_lambda else None  # refuses --out with --in-place early
    device = resolve_device(config.device)
    fid_net = inception_net(config.fid_weights, device) if config.fid_weights else None  # a bad file fails first
    model = load(config.model, map_location=device).to(device).eval()
    check_trained(model, config.model)
    channels, size = model.in_chans, model.image_size
    notes: List[str] = []

    test = open_split(dataset, "test", config.data_dir, image_size=size, resize=None if transfer else card.data.resize)
    idx = _indices(test, config.n, config.seed, notes, "test split")
    first = test.take(idx[:1])[0]
    _fit(first, channels, size, test.name, convert=transfer)  # refuse a channel mismatch before reading it all
    if first.shape[1] != channels:
        notes.append(f"transfer: {test.name}'s {first.shape[1]}-channel images "
                     + ("repeated to 3 channels" if channels == 3 else "converted to gray (BT.601 luma)"))
    images, labels = test.take(idx)
    images = _fit(images, channels, size, test.name, convert=transfer)
    z, recon = features_of(model, images, config.batch_size, device)
    emit(Step("reconstruction", 1, 1))
    mse = float((recon.double() - images.double()).square().mean())
    reconstruction = {"mse": mse, "psnr": psnr(recon, images), "ssim": ssim(recon, images)}
    rr = rate_reduction(z.double(), labels, test.num_classes, config.eps2)
    rate = {"R": float(rr.R), "Rc": float(rr.Rc), "dR": float(rr.dR), "eps2": config.eps2}
    if transfer:
        notes.append(f"transfer to {test.name}: Rc and dR use {test.name}'s labels; nearest subspace skipped "
                     f"(the model's classes are {own or 'unknown'}'s)")

    subspace = None
    if not transfer:
        subspace = _subspace_accuracy(model, card, config, z, labels, test.num_classes, device, notes, emit)

    calibration, rules, stored = None, {}, None
    if config.calibrate_lambda:
        rule, rules, calibration = calibrate_ae_lambda(model, card, config, device, emit)
        model.csc_card.lambda_rule = rule.to_dict()
        save(model, target)
        calibration["written_to"] = str(target)
        stored = rule.kind
    elif card.lambda_rule:
        rule = rule_from_dict(card.lambda_rule)
        rules, stored = {rule.kind: rule}, rule.kind

    denoising = None
    if _encoder_layers(model):
        denoising = _denoising(model, config, images, device, emit, rules, stored)
    else:
        notes.append("lambda sweep skipped: the encoder has no CSC layers (CTRL)")

    fid_result = None
    if fid_net is not None:
        fid_result = _fid(fid_net, images, recon, device, config.batch_size)
        if images.shape[0] < 2048:
            notes.append(f"FID on {images.shape[0]} images (fewer than the 2048 feature dimensions: biased "
                         "upwards; the CTRL authors use 50k training images)")
        emit(Step("fid", 1, 1))

    result = AEEvalResult(model=config.model, dataset=test.name, transfer=transfer, images=int(images.shape[0]),
                          reconstruction=reconstruction, rate=rate, nearest_subspace=subspace, denoising=denoising,
                          calibration=calibration, fid=fid_result, notes=notes)
    if config.csv:
        if denoising is None:
            notes.append("--csv: no lambda sweep to write")
        else:
            result.files.append(str(write_sweep_csv(result.to_dict(), Path(config.csv))))
    return result


def write_sweep_csv(result: Dict[str, Any], path: Path) -> Path:
    """The lambda sweep of an ``AEEvalResult.to_dict()`` as rows ``noise, lambda, psnr, ssim``:
    the noisy input itself (lambda ``input``), the trained lambdas (``trained``), the grid, then
    each per-input rule (``auto:NAME``)."""
    den = result["denoising"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csvlib.writer(fh)
        w.writerow(["noise", "lambda", "psnr", "ssim"])
        w.writerow([den["noise"], "input", den["noisy_input_psnr"], ""])
        w.writerow([den["noise"], "trained", den["trained"]["psnr"], den["trained"]["ssim"]])
        for row in den["rows"]:
            w.writerow([den["noise"], row["lambda"], row["psnr"], row["ssim"]])
        for name, row in den.get("auto", {}).items():
            w.writerow([den["noise"], f"auto:{name}", row["psnr"], row["ssim"]])
    return path
