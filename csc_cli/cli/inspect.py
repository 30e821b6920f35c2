"""``csc inspect``: what a sparse model learned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..choices import DATASET_HELP
from . import render
from .app import CTRL_DIGITS, SDNET_DIGITS, command, console
from .options import DATA_PANEL, DataDir, ModelFile, Seed, floats


CLASSIFIERS, AUTOENCODERS = "Classifiers", "Autoencoders"


@command(example=[
    ("csc train's SDNet: card, atoms, codes, reconstructions, convergence:", f"csc inspect {SDNET_DIGITS}"),
    ("The stem's codes of your own images, as JSON:",
     f"csc inspect {SDNET_DIGITS} --image cat.png --layer conv1 --json"),
    ("A CSC-CTRL autoencoder: reconstructions, samples, heatmaps, spectra:",
     f"csc inspect {CTRL_DIGITS} --out pictures"),
])
def inspect(
    model: ModelFile,
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

    A classifier: the model card, dictionary atoms, sparse codes, reconstructions, layer-by-layer
    push-back (all-CSC no-shortcut models) and the convergence of the K steps. --image and --layer
    can be given more than once.

    An autoencoder (CTRL / CSC-CTRL): reconstructions, samples and traversals of each class's
    principal subspace, |Z^T Z| and |Z^T f(g(Z))| heatmaps, per-class spectra and the atoms of
    every layer.
    """
    from ..checkpoint import read_card
    from ..jobs.classifier.inspect import InspectConfig, run_inspect

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
