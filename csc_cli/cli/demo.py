"""``csc demo``: the CSC layer on the built-in digits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import render
from .app import command, console
from .options import Json, Seed, floats
from .progress import JobProgress


LAYER, LEARNING = "CSC layer", "Learning and report"


@command(example=[
    ("The demo as it ships (offline, under a minute on 2 cores):", "csc demo"),
    ("A sparser layer, more atoms, the pictures in out/demo:",
     "csc demo --lambda 0.3 --steps 5 --atoms 32 --epochs 5 --out out/demo"),
    ("Every number as JSON:", "csc demo --json"),
])
def demo(
    lam: Annotated[float, typer.Option("--lambda", "--lam", help="Sparsity weight lambda.",
                                       rich_help_panel=LAYER)] = 0.1,
    steps: Annotated[int, typer.Option(help="Unrolled FISTA steps K.", rich_help_panel=LAYER)] = 2,
    atoms: Annotated[int, typer.Option(help="Dictionary atoms (output channels).", rich_help_panel=LAYER)] = 16,
    kernel_size: Annotated[int, typer.Option(help="Atom size in pixels.", rich_help_panel=LAYER)] = 5,
    epochs: Annotated[int, typer.Option(help="Passes over the digits to learn the atoms.",
                                        rich_help_panel=LEARNING)] = 3,
    max_images: Annotated[Optional[int], typer.Option(help="Use only this many digits (quick runs).",
                                                      rich_help_panel=LEARNING)] = None,
    lam_grid: Annotated[str, typer.Option(help="Lambdas for the sparsity table.",
                                          rich_help_panel=LEARNING)] = "0.02,0.05,0.1,0.2,0.4",
    seed: Seed = 0,
    out: Annotated[Optional[Path], typer.Option(help="Write atoms.png and reconstructions.png here.")] = None,
    as_json: Json = False,
) -> None:
    """Show what a CSC layer does, on the built-in digits.

    Learns a convolutional dictionary on the digits, then shows sparsity and reconstruction vs
    lambda, the distance of K steps to the converged code, and the K = 1 identity (conv + fixed
    bias + ReLU). Runs offline in under a minute on 2 cores.
    """
    from ..jobs.demo import DemoConfig, run_demo

    config = DemoConfig(lam=lam, steps=steps, atoms=atoms, kernel_size=kernel_size, epochs=epochs,
                        max_images=max_images, lam_grid=floats(lam_grid), seed=seed, out=out)
    if as_json:
        console.print_json(json.dumps(run_demo(config).to_dict()))
        return
    with JobProgress(console, "learning atoms") as bar:
        result = run_demo(config, lambda step: bar.update(step.stage, step.done, step.total))
    render.demo(result)
