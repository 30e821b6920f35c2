"""``csc eval``: clean accuracy, corruptions, test-time lambda."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..choices import CORRUPTION_GROUPS
from . import render
from .app import app, console, err_console
from .options import (Amp, DataDir, Device, EvalDataset, Json, LamLayers, LamPolicy, LamScale, ModelFile, Seed, floats,
                      grid, names)
from .progress import JobProgress, on_steps


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
        "--calibrate-lambda", help="Fit lambda = a*r(x)+b on corrupted training images and store it.")] = False,
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
) -> None:
    """Evaluate a model: clean accuracy, corruption robustness, test-time lambda (as trained,
    oracle, auto)."""
    from ..jobs.evaluate import EvalConfig, run_eval

    sev = [int(v) for v in floats(severities)] if severities else [1, 2, 3, 4, 5]
    config = EvalConfig(model=str(model), dataset=dataset, data_dir=data_dir, batch_size=batch_size,
                        max_images=max_images, device=device, amp=amp, corruptions=list(corruptions or []),
                        severities=sev, corruption_dir=corruption_dir, baseline=baseline, lam=lam,
                        lambda_scale=lambda_scale, lambda_layers=lambda_layers,
                        lambda_sweep=grid(lambda_sweep) if lambda_sweep else None,
                        calibrate_lambda=calibrate_lambda, calibration_images=calibration_images,
                        calibration_corruptions=names(calibration_corruptions), out=out, in_place=in_place,
                        csv=str(csv) if csv else None, plots=str(plots) if plots else None, seed=seed)
    with JobProgress(err_console if as_json else console, "evaluating") as bar:
        result = run_eval(config, on_steps(bar)).to_dict()
    if as_json:
        console.print_json(json.dumps(result))
        return
    render.evaluate(result)
