"""``csc eval``: clean accuracy, corruptions, test-time lambda; for an autoencoder model file (its card
says ``task == 'autoencoder'``) reconstruction, features and the encoder's lambda as a denoiser
(:mod:`csc_cli.jobs.autoencoder.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..choices import CORRUPTION_GROUPS
from . import render
from .app import CTRL_DIGITS, SDNET_DIGITS, command
from .options import (DATA_PANEL, LAMBDA_PANEL, Amp, DataDir, Device, EvalDataset, Json, LamLayers, LamPolicy,
                      LamScale, ModelFile, RuleName, Seed, floats, grid, names)
from .progress import run_and_show


CORRUPT, CALIBRATE, AUTOENCODERS = "Corruptions", "Calibrating lambda", "Autoencoders"


@command("eval", example=[
    ("Accuracy of csc train's SDNet on its test set (top-1, top-5, per class):", f"csc eval {SDNET_DIGITS}"),
    ("The noise corruptions, and the best test-time lambda at each level:",
     f"csc eval {SDNET_DIGITS} -c noise --lambda-sweep 0.1:1.4:0.1 --plots figs"),
    ("A CSC-CTRL autoencoder: reconstruction, features, lambda as a denoiser:", f"csc eval {CTRL_DIGITS}"),
])
def eval_(
    model: ModelFile,
    dataset: EvalDataset = None,
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 256,
    device: Device = "auto",
    amp: Annotated[Amp, typer.Option(help="Autocast for evaluation.")] = "none",
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Write every accuracy as CSV rows here.")] = None,
    plots: Annotated[Optional[Path], typer.Option(help="Write PNG figures into this folder.")] = None,
    seed: Seed = 0,
    as_json: Json = False,
    data_dir: DataDir = None,
    max_images: Annotated[Optional[int], typer.Option(help="A seeded subset of the test split.",
                                                      rich_help_panel=DATA_PANEL)] = None,
    corruptions: Annotated[Optional[List[str]], typer.Option(
        "--corruptions", "-c", help=f"Names, or {' / '.join(CORRUPTION_GROUPS)}.", rich_help_panel=CORRUPT)] = None,
    severities: Annotated[str, typer.Option(help="Severities to evaluate (1-5).",
                                            rich_help_panel=CORRUPT)] = "1,2,3,4,5",
    corruption_dir: Annotated[Optional[str], typer.Option(
        help="Read CIFAR-10-C/100-C .npy or ImageNet-C folders.", rich_help_panel=CORRUPT)] = None,
    baseline: Annotated[Optional[str], typer.Option(help="A model file for mCE and relative mCE.",
                                                    rich_help_panel=CORRUPT)] = None,
    lam: LamPolicy = None,
    lambda_scale: LamScale = None,
    lambda_layers: LamLayers = "first",
    lambda_sweep: Annotated[Optional[str], typer.Option(
        help="First-layer lambdas, e.g. 0.1:1.4:0.1 (the oracle).", rich_help_panel=LAMBDA_PANEL)] = None,
    calibrate_lambda: Annotated[bool, typer.Option(
        "--calibrate-lambda", help="Fit the label-free rules, store one (--rule).",
        rich_help_panel=CALIBRATE)] = False,
    rule: Annotated[RuleName, typer.Option(help="The rule stored.", rich_help_panel=CALIBRATE)] = "best",
    calibration_images: Annotated[int, typer.Option(help="Training images used to calibrate.",
                                                    rich_help_panel=CALIBRATE)] = 512,
    calibration_corruptions: Annotated[str, typer.Option(help="Corruptions used to calibrate.",
                                                         rich_help_panel=CALIBRATE)] = "gaussian_noise",
    out: Annotated[Optional[str], typer.Option(
        help="Write the calibrated model here.", show_default="MODEL.calibrated.safetensors",
        rich_help_panel=CALIBRATE)] = None,
    in_place: Annotated[bool, typer.Option(
        "--in-place", help="Store the rule in MODEL itself instead.", rich_help_panel=CALIBRATE)] = False,
    noise: Annotated[Optional[float], typer.Option(
        help="Sigma of the Gaussian noise of the lambda sweep.", show_default="0.1",
        rich_help_panel=AUTOENCODERS)] = None,
    lambda_grid: Annotated[Optional[str], typer.Option(
        help="Lambdas for every encoder CSC layer.", show_default="0.05,0.1,0.2,0.4",
        rich_help_panel=AUTOENCODERS)] = None,
    fid_weights: Annotated[Optional[Path], typer.Option(
        help="Inception-v3 weights (local file) for FID.", rich_help_panel=AUTOENCODERS)] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="A seeded subset of the test split.",
                                             rich_help_panel=AUTOENCODERS)] = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="Evaluate on another dataset (a transfer).", rich_help_panel=AUTOENCODERS)] = None,
) -> None:
    """Evaluate a model: accuracy, corruptions, test-time lambda.

    A classifier: clean accuracy, corruption robustness (--corruptions: names or groups, repeatable
    or comma-separated; the 19 names are in docs/eval.md) and the test-time lambda as trained, the
    oracle of a --lambda-sweep, or auto. --lambda, --lambda-scale and --lambda-layers mean the same
    in csc eval and csc attack: auto (the model's calibrated rule), a number (the first CSC layer)
    or layer=value,...; the scale multiplies the trained lambda of the first (or every) CSC layer.

    --calibrate-lambda fits the label-free lambda rules on corrupted training images and writes one
    into a new model file (or MODEL with --in-place): best (highest accuracy on held-out corrupted
    training images), residual (a*r(x)+b), sigma (a*sigma(x)+b, MAD noise estimate), sigma_table
    (monotone in sigma(x)) or discrepancy (the residual matched to the noise energy).

    An autoencoder (its card says so; its options are under Autoencoders): reconstruction MSE /
    PSNR / SSIM, nearest-subspace accuracy and rate reduction of the features, a lambda sweep on
    noisy inputs, FID with --fid-weights; --data evaluates on another dataset (gray <-> RGB).
    """
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
    from ..jobs.classifier.evaluate import EvalConfig, run_eval

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
    from ..jobs.autoencoder.evaluate import AEEvalConfig, run_ae_eval
    from .render_ae import ae_evaluate

    config = AEEvalConfig(model=str(model), data=data, data_dir=data_dir, n=n, batch_size=batch_size, device=device,
                          fid_weights=str(fid_weights) if fid_weights else None, csv=str(csv) if csv else None,
                          seed=seed, **calibration)
    if noise is not None:
        config.noise = noise
    if lambda_grid is not None:
        config.lambda_grid = grid(lambda_grid)
    run_and_show(run_ae_eval, config, "evaluating", as_json, ae_evaluate)
