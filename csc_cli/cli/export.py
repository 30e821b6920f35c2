"""``csc export``: a model file as an ONNX graph, lambda an input or the calibrated rule inside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Tuple

import typer

from . import render
from .app import CTRL_DIGITS, SDNET_DIGITS, command
from .options import DATA_PANEL, LAMBDA_PANEL, DataDir, Json, ModelFile
from .progress import run_and_show

GRAPH, CHECK = "Graph", "Check against csc"
Part = Literal["encoder", "decoder", "both"]
LambdaMode = Literal["input", "auto"]
LambdaInputs = Literal["one", "each"]


def _size(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """'64' or '64,48' -> (H, W)."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected H,W or one number, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise typer.BadParameter(f"expected H,W or one number (positive), got {text!r}")
    return (values[0], values[-1])


@command(example=[
    ("csc train's SDNet as ONNX, lambda an input, checked on 64 test images:",
     f"csc export {SDNET_DIGITS} --out sdnet.onnx --check 64"),
    ("The calibrated rule inside the graph (csc eval --calibrate-lambda wrote it):",
     "csc export runs/digits-resnet20_cifar-stem/model.calibrated.safetensors --lambda auto --out auto.onnx"),
    ("The CSC-CTRL encoder alone:", f"csc export {CTRL_DIGITS} --part encoder --out encoder.onnx"),
])
def export(
    model: ModelFile,
    out: Annotated[Optional[Path], typer.Option(help="The ONNX file to write.", show_default="MODEL.onnx")] = None,
    as_json: Json = False,
    part: Annotated[Optional[Part], typer.Option(help="An autoencoder's part.", show_default="both",
                                                 rich_help_panel=GRAPH)] = None,
    size: Annotated[Optional[str], typer.Option(help="Another input size H,W (its own step sizes).",
                                                show_default="the model's", rich_help_panel=GRAPH)] = None,
    lam: Annotated[LambdaMode, typer.Option("--lambda", help="A graph input, or auto: the model's rule.",
                                            rich_help_panel=LAMBDA_PANEL)] = "input",
    lambda_inputs: Annotated[LambdaInputs, typer.Option(help="One lambda input, or each: one per CSC layer.",
                                                        rich_help_panel=LAMBDA_PANEL)] = "one",
    check: Annotated[int, typer.Option(help="Compare with csc on N images (0: no check).",
                                       rich_help_panel=CHECK)] = 0,
    tolerance: Annotated[float, typer.Option(help="Largest relative difference --check accepts.",
                                             rich_help_panel=CHECK)] = 1e-4,
    seed: Annotated[int, typer.Option(help="Seed of the check's sample of images.", rich_help_panel=CHECK)] = 0,
    data: Annotated[Optional[str], typer.Option(help="The check's dataset.", show_default="the model's",
                                                rich_help_panel=DATA_PANEL)] = None,
    data_dir: DataDir = None,
) -> None:
    """Write a model as an ONNX graph for onnxruntime and other runtimes.

    The graph takes images in [0, 1] (input 'images', float32, N x C x H x W; the model's
    normalisation is inside) and gives 'logits' -- for an autoencoder 'features' and
    'reconstruction' (--part both), or one part: encoder (images -> features), decoder (features ->
    images). The batch N is free; the size is the model's own unless --size asks, since every CSC
    layer's step size belongs to its input size and is a constant of the graph.

    --lambda input: an optional input 'lambda', shape [1] or [N] (one per image), sets what csc
    eval --lambda X sets (the first CSC layer; every encoder CSC layer of an autoencoder); not fed,
    it is the trained value. --lambda-inputs each: one input 'lambda.LAYER' per CSC layer instead.
    --lambda auto: the rule csc eval --calibrate-lambda stored picks each image's lambda inside the
    graph, as csc eval --lambda auto does; an extra output 'lambda' says which.

    --check N runs csc and onnxruntime on N test images of the model's dataset (seeded noise when
    its file names none) and fails above --tolerance (largest difference relative to the largest
    output). Needs the export extra (onnx, onnxruntime, onnxscript; see docs/export.md).
    """
    from ..jobs.export import ExportConfig, run_export

    if out is not None and out.exists() and out.is_dir():
        raise ValueError(f"--out {out} is a directory: give a file name ending in .onnx")
    config = ExportConfig(model=str(model), out=str(out) if out else None, part=part, lam=lam,
                          lambda_inputs=lambda_inputs, size=_size(size), check=check, tolerance=tolerance,
                          data=data, data_dir=data_dir, seed=seed)
    run_and_show(run_export, config, "exporting", as_json, render.export)
