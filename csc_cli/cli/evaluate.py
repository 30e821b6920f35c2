"""``csc eval``: clean accuracy, corruptions, test-time lambda; for an autoencoder model file (its card
says ``task == 'autoencoder'``) reconstruction, features and the encoder's lambda as a denoiser
(:mod:`csc_cli.jobs.ae_eval`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..choices import CORRUPTION_GROUPS
from . import render
from .app import app
from .options import (Amp, DataDir, Device, EvalDataset, Json, LamLayers, LamPolicy, LamScale, ModelFile, RuleName,
                      Seed, floats, grid, names)
from .progress import run_and_show


@app.command("eval")
def eval_(
    model: ModelFile,
    dataset: EvalDataset = None,
    data_dir: DataDir = None,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 256,
    max_images: Annotated[Optional[int], typer.Option(help="A seeded subset of the test split.")] = None,
    device: Device = "auto",
    amp: Annotated[Amp, typer.Option(help="Autocast for evaluation.")] = "none",
    corruptions: Annotated[Optional[List[str]], typer.Option(
        "--corruptions", "-c", help=f"Corruption names, or {' / '.join(CORRUPTION_GROUPS)} (repeatable, "
                                    "comma-separated); see the README for the 19 names.")] = None,
    severities: Annotated[str, typer.Option(help="Severities to evaluate (1-5).")] = "1,2,3,4,5",
    corruption_dir: Annotated[Optional[str], typer.Option(
        help="Read CIFAR-10-C/100-C .npy or ImageNet-C folders instead of generating.")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="A model file to compute mCE and relative mCE against.")] = None,
    lam: LamPolicy = None,
    lambda_scale: LamScale = None,
    lambda_layers: LamLayers = "first",
    lambda_sweep: Annotated[Optional[str], typer.Option(
        help="Lambdas for the first CSC layer, e.g. 0.1:1.4:0.1 (reports the oracle).")] = None,
    calibrate_lambda: Annotated[bool, typer.Option(
        "--calibrate-lambda", help="Fit the label-free lambda rules on corrupted training images and store "
                                   "one (--rule) in a new model file.")] = False,
    rule: Annotated[RuleName, typer.Option(
        help="The rule --calibrate-lambda stores: best (highest accuracy on held-out corrupted training "
             "images), residual (a*r(x)+b), sigma (a*sigma(x)+b, MAD noise estimate), sigma_table "
             "(monotone in sigma(x)) or discrepancy (residual matched to the noise energy).")] = "best",
    calibration_images: Annotated[int, typer.Option(help="Training images used to calibrate.")] = 512,
    calibration_corruptions: Annotated[str, typer.Option(help="Corruptions used to calibrate.")] = "gaussian_noise",
    out: Annotated[Optional[str], typer.Option(
        help="Write the calibrated model here (default: MODEL's name + .calibrated.safetensors).")] = None,
    in_place: Annotated[bool, typer.Option(
        "--in-place", help="Store the calibrated rule in MODEL itself instead of a new file.")] = False,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Write every accuracy as CSV rows here.")] = None,
    plots: Annotated[Optional[Path], typer.Option(help="Write PNG figures into this folder.")] = None,
    seed: Seed = 0,
    as_json: Json = False,
    noise: Annotated[Optional[float], typer.Option(
        help="Autoencoders: sigma of the Gaussian noise for the lambda sweep (default 0.1).")] = None,
    lambda_grid: Annotated[Optional[str], typer.Option(
        help="Autoencoders: lambdas for every encoder CSC layer, e.g. 0.05,0.1,0.2,0.4 (the default) or "
             "0.1:1.4:0.1.")] = None,
    fid_weights: Annotated[Optional[Path], typer.Option(
        help="Autoencoders: an Inception-v3 state dict (safetensors or torch file) for FID of the "
             "reconstructions.")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Autoencoders: a seeded subset of the test split.")] = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="Autoencoders: evaluate on another dataset (a transfer; gray <-> RGB converted).")] = None,
) -> None:
    """Evaluate a model: clean accuracy, corruption robustness, test-time lambda (as trained,
    oracle, auto). For an autoencoder: reconstruction MSE / PSNR / SSIM, nearest-subspace accuracy
    and rate reduction of the features, a lambda sweep on noisy inputs, FID with --fid-weights."""
    from ..checkpoint import read_card

    if read_card(model).task == "autoencoder":
        given = [flag for flag, value, default in (
            ("--corruptions", corruptions, None), ("--severities", severities, "1,2,3,4,5"),
            ("--corruption-dir", corruption_dir, None), ("--baseline", baseline, None), ("--lambda", lam, None),
            ("--lambda-scale", lambda_scale, None), ("--lambda-layers", lambda_layers, "first"),
            ("--lambda-sweep", lambda_sweep, None),
            ("--calibration-corruptions", calibration_corruptions, "gaussian_noise"),
            ("--plots", plots, None), ("--amp", amp, "none"))
            if value not in (default, [])]
        if given:
            raise typer.BadParameter(f"{', '.join(given)}: classifier options; {model} is an autoencoder (its "
                                     "options: --noise, --lambda-grid, --fid-weights, --n, --data, --csv, "
                                     "--calibrate-lambda, --rule, --calibration-images, --out, --in-place)")
        if dataset and data and dataset != data:
            raise typer.BadParameter(f"DATASET {dataset} and --data {data} disagree: give one")
        if n is not None and max_images is not None and n != max_images:
            raise typer.BadParameter("--n and --max-images disagree: give one")
        _ae_eval(model, data or dataset, data_dir, n if n is not None else max_images, noise, lambda_grid,
                 fid_weights, batch_size, device, csv, seed, as_json,
                 dict(calibrate_lambda=calibrate_lambda, rule=rule, calibration_images=calibration_images, out=out,
                      in_place=in_place))
        return
    given = [flag for flag, value in (("--noise", noise), ("--lambda-grid", lambda_grid), ("--fid-weights", fid_weights),
                                      ("--n", n), ("--data", data)) if value is not None]
    if given:
        raise typer.BadParameter(f"{', '.join(given)}: autoencoder options; {model} is a classifier")
    from ..jobs.evaluate import EvalConfig, run_eval

    sev = [int(v) for v in floats(severities)] if severities else [1, 2, 3, 4, 5]
    config = EvalConfig(model=str(model), dataset=dataset, data_dir=data_dir, batch_size=batch_size,
                        max_images=max_images, device=device, amp=amp, corruptions=list(corruptions or []),
                        severities=sev, corruption_dir=corruption_dir, baseline=baseline, lam=lam,
                        lambda_scale=lambda_scale, lambda_layers=lambda_layers,
                        lambda_sweep=grid(lambda_sweep) if lambda_sweep else None,
                        calibrate_lambda=calibrate_lambda, calibration_images=calibration_images, rule=rule,
                        calibration_corruptions=names(calibration_corruptions), out=out, in_place=in_place,
                        csv=str(csv) if csv else None, plots=str(plots) if plots else None, seed=seed)
    run_and_show(run_eval, config, "evaluating", as_json, render.evaluate)


def _ae_eval(model: Path, data: Optional[str], data_dir: Optional[str], n: Optional[int], noise: Optional[float],
             lambda_grid: Optional[str], fid_weights: Optional[Path], batch_size: int, device: str,
             csv: Optional[Path], seed: int, as_json: bool, calibration: dict) -> None:
    from ..jobs.ae_eval import AEEvalConfig, run_ae_eval
    from .render_ae import ae_evaluate

    config = AEEvalConfig(model=str(model), data=data, data_dir=data_dir, n=n, batch_size=batch_size, device=device,
                          fid_weights=str(fid_weights) if fid_weights else None, csv=str(csv) if csv else None,
                          seed=seed, **calibration)
    if noise is not None:
        config.noise = noise
    if lambda_grid is not None:
        config.lambda_grid = grid(lambda_grid)
    run_and_show(run_ae_eval, config, "evaluating", as_json, ae_evaluate)
