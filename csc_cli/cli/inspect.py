"""``csc inspect``: what a sparse model learned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..choices import DATASET_HELP
from . import render
from .app import app, console
from .options import DataDir, ModelFile, Seed, floats


@app.command()
def inspect(
    model: ModelFile,
    out: Annotated[Path, typer.Option(help="Folder for the PNG files.", file_okay=False)] = Path("inspect"),
    data: Annotated[Optional[str], typer.Option(
        help=f"Dataset to draw images from: {DATASET_HELP} (default: the model's).")] = None,
    data_dir: DataDir = None,
    images: Annotated[int, typer.Option(help="How many test images to code.", min=1)] = 64,
    image: Annotated[Optional[List[Path]], typer.Option("--image", help="Use these image files instead (repeatable).")] = None,
    layer: Annotated[Optional[List[str]], typer.Option("--layer", help="Only these CSC layers (repeatable).")] = None,
    lambda_scales: Annotated[str, typer.Option(help="Lambda multiples for the sparsity-vs-lambda statistics.")] = "0.5,1,2,4",
    max_steps: Annotated[int, typer.Option(help="Steps K for the convergence curves.", min=1)] = 50,
    seed: Seed = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print every number as JSON.")] = False,
) -> None:
    """See what a sparse model learned: model card, dictionary atoms, sparse codes, reconstructions,
    layer-by-layer push-back (all-CSC no-shortcut models) and convergence of the K steps."""
    from ..jobs.inspect import InspectConfig, run_inspect

    config = InspectConfig(model=str(model), out=str(out), dataset=data, data_dir=data_dir, images=images,
                           image_files=[str(p) for p in image or []], layers=list(layer or []),
                           lambda_scales=floats(lambda_scales), max_steps=max_steps, seed=seed)
    result = run_inspect(config).to_dict()
    if as_json:
        console.print_json(json.dumps(result))
        return
    render.inspect(result)
