"""``csc inspect``: what a sparse model learned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..choices import DATASET_HELP
from . import render
from .app import CTRL_DIGITS, SDNET_DIGITS, command, console
from .options import DATA_PANEL, DataDir, Seed, floats


CLASSIFIERS, AUTOENCODERS = "Classifiers", "Autoencoders"


@command(example=[
    ("csc train's SDNet: card, atoms, codes, reconstructions, convergence:", f"csc inspect {SDNET_DIGITS}"),
    ("A CSC-CTRL autoencoder: reconstructions, samples, heatmaps, spectra:",
     f"csc inspect {CTRL_DIGITS} --out pictures"),
    ("Training curves of two runs on one figure (run folders, or metrics.jsonl):",
     "csc inspect runs/sdnet runs/plain --out curves"),
])
def inspect(
    targets: Annotated[List[Path], typer.Argument(
        help="A csc model file, or run folders (training curves).", exists=True, show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder for the PNG files.", file_okay=False)] = Path("inspect"),
    seed: Seed = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print every number as JSON.")] = False,
    data: Annotated[Optional[str], typer.Option(help=f"Images from: {DATASET_HELP}.", show_default="the model's",
                                                rich_help_panel=DATA_PANEL)] = None,
    data_dir: DataDir = None,
    images: Annotated[int, typer.Option(help="Test images to code (autoencoder: shown, <= 16).", min=1,
                                        rich_help_panel=DATA_PANEL)] = 64,
    image: Annotated[Optional[List[Path]], typer.Option("--image", help="Use these image files instead.",
                                                        rich_help_panel=DATA_PANEL)] = None,
    layer: Annotated[Optional[List[str]], typer.Option("--layer", help="Only these CSC layers.",
                                                       rich_help_panel=CLASSIFIERS)] = None,
    lambda_scales: Annotated[str, typer.Option(help="Lambda multiples for sparsity vs lambda.",
                                               rich_help_panel=CLASSIFIERS)] = "0.5,1,2,4",
    max_steps: Annotated[int, typer.Option(help="Steps K of the convergence curves.", min=1,
                                           rich_help_panel=CLASSIFIERS)] = 50,
    features: Annotated[int, typer.Option(help="Test features for the heatmaps and spectra.", min=2,
                                          rich_help_panel=AUTOENCODERS)] = 500,
) -> None:
    """Show what a sparse model learned, as pictures and numbers.

    Run folders of csc train (or their metrics.jsonl): the training curves -- losses (the game's
    terms), accuracy or PSNR, learning rate and each CSC layer's non-zero share, reconstruction
    error and step size -- several runs on one figure.

    A classifier: the model card, dictionary atoms, sparse codes, reconstructions, layer-by-layer
    push-back (all-CSC no-shortcut models) and the convergence of the K steps. --image and --layer
    can be given more than once.

    An autoencoder (CTRL / CSC-CTRL): reconstructions, samples and traversals of each class's
    principal subspace, |Z^T Z| and |Z^T f(g(Z))| heatmaps, per-class spectra and the atoms of
    every layer.
    """
    from ..checkpoint import read_card
    from ..jobs.classifier.inspect import InspectConfig, run_inspect
    from ..jobs.curves import is_run

    runs = [t for t in targets if is_run(t)]
    if runs:
        if len(runs) != len(targets):
            raise typer.BadParameter("give either one model file or run folders (metrics.jsonl), not both")
        given = [flag for flag, value, default in (
            ("--data", data, None), ("--image", image, None), ("--layer", layer, None), ("--images", images, 64),
            ("--lambda-scales", lambda_scales, "0.5,1,2,4"), ("--max-steps", max_steps, 50),
            ("--features", features, 500), ("--data-dir", data_dir, None), ("--seed", seed, 0))
            if value not in (default, [])]
        if given:
            raise typer.BadParameter(f"{', '.join(given)}: options for a model file; training curves take --out and --json")
        _curves(runs, out, as_json)
        return
    if len(targets) != 1 or targets[0].is_dir():
        raise typer.BadParameter(f"{targets[0] if targets[0].is_dir() else targets[1]}: give one model file "
                                 "(.safetensors), or run folders that hold a metrics.jsonl")
    model = targets[0]
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
    from ..jobs.autoencoder.inspect import AEInspectConfig, run_ae_inspect
    from .progress import run_and_show
    from .render_ae import ae_inspect

    config = AEInspectConfig(model=str(model), out=str(out), data_dir=data_dir, images=images, features=features,
                             seed=seed)
    run_and_show(run_ae_inspect, config, "inspecting", as_json, ae_inspect)


def _curves(runs: List[Path], out: Path, as_json: bool) -> None:
    from ..jobs.curves import CurvesConfig, run_curves

    result = run_curves(CurvesConfig(runs=[str(r) for r in runs], out=str(out))).to_dict()
    if as_json:
        console.print_json(json.dumps(result))
        return
    render.curves(result)
