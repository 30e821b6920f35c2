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
    images: Annotated[int, typer.Option(help="How many test images to code (autoencoder: how many "
                                             "reconstructions to show, at most 16).", min=1)] = 64,
    image: Annotated[Optional[List[Path]], typer.Option("--image", help="Use these image files instead (repeatable).")] = None,
    layer: Annotated[Optional[List[str]], typer.Option("--layer", help="Only these CSC layers (repeatable).")] = None,
    lambda_scales: Annotated[str, typer.Option(help="Lambda multiples for the sparsity-vs-lambda statistics.")] = "0.5,1,2,4",
    max_steps: Annotated[int, typer.Option(help="Steps K for the convergence curves.", min=1)] = 50,
    seed: Seed = 0,
    features: Annotated[int, typer.Option(help="Autoencoders: test features for the |Z^T Z| heatmaps and the "
                                               "spectra.", min=2)] = 500,
    as_json: Annotated[bool, typer.Option("--json", help="Print every number as JSON.")] = False,
) -> None:
    """See what a sparse model learned: model card, dictionary atoms, sparse codes, reconstructions,
    layer-by-layer push-back (all-CSC no-shortcut models) and convergence of the K steps. For an
    autoencoder (CTRL / CSC-CTRL): reconstructions, samples and traversals of each class's principal
    subspace, |Z^T Z| and |Z^T f(g(Z))| heatmaps, per-class spectra and the atoms of every layer."""
    from ..checkpoint import read_card
    from ..jobs.inspect import InspectConfig, run_inspect

    if read_card(model).task == "autoencoder":
        given = [flag for flag, value, default in (
            ("--data", data, None), ("--image", image, None), ("--layer", layer, None),
            ("--lambda-scales", lambda_scales, "0.5,1,2,4"), ("--max-steps", max_steps, 50))
            if value not in (default, [])]
        if given:
            raise typer.BadParameter(f"{', '.join(given)}: classifier options; {model} is an autoencoder (its "
                                     "options: --out, --data-dir, --images, --features, --seed, --json)")
        _ae_inspect(model, out, data_dir, min(images, 16), features, seed, as_json)
        return
    if features != 500:
        raise typer.BadParameter(f"--features: an autoencoder option; {model} is a classifier")

    config = InspectConfig(model=str(model), out=str(out), dataset=data, data_dir=data_dir, images=images,
                           image_files=[str(p) for p in image or []], layers=list(layer or []),
                           lambda_scales=floats(lambda_scales), max_steps=max_steps, seed=seed)
    result = run_inspect(config).to_dict()
    if as_json:
        console.print_json(json.dumps(result))
        return
    render.inspect(result)


def _ae_inspect(model: Path, out: Path, data_dir: Optional[str], images: int, features: int, seed: int,
                as_json: bool) -> None:
    from ..jobs.ae_inspect import AEInspectConfig, run_ae_inspect
    from .progress import run_and_show
    from .render_ae import ae_inspect

    config = AEInspectConfig(model=str(model), out=str(out), data_dir=data_dir, images=images, features=features,
                             seed=seed)
    run_and_show(run_ae_inspect, config, "inspecting", as_json, ae_inspect)
