"""``csc attack``: adversarial robustness that survives scrutiny."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..choices import ATTACK_PRESET_HELP, ATTACKS, GRADIENT_MODES, RULE_MODES
from . import render
from .app import app
from .options import (AttackPreset, DataDir, Device, EvalDataset, LamLayers, LamPolicy, LamScale, ModelFile,
                      Seed, grid, names)
from .progress import run_and_show


@app.command()
def attack(
    ctx: typer.Context,
    model: ModelFile,
    dataset: EvalDataset = None,
    data_dir: DataDir = None,
    eps: Annotated[str, typer.Option(help="Perturbation budget in pixel units of [0, 1] images, e.g. 8/255 or 0.5.")] = "8/255",
    norm: Annotated[str, typer.Option(help="Threat model (case-insensitive).", metavar="<Linf|L2>")] = "Linf",
    n: Annotated[int, typer.Option("--n", help="Number of test examples (a fixed, seeded subset).")] = 100,
    batch_size: Annotated[int, typer.Option(help="Attack batch size.")] = 100,
    attacks: Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(ATTACKS)}.")] = "fgsm,pgd,apgd-ce,apgd-dlr,square",
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 20,
    alpha: Annotated[Optional[float], typer.Option(help="PGD step size (default 2.5 * eps / steps).")] = None,
    restarts: Annotated[int, typer.Option(help="PGD random restarts.")] = 1,
    modes: Annotated[Optional[str], typer.Option(
        help=f"Gradient modes, comma-separated (default: all that apply): {', '.join(GRADIENT_MODES + RULE_MODES)}.")] = None,
    lam: LamPolicy = None,
    lambda_scale: LamScale = None,
    lambda_layers: LamLayers = "first",
    lambda_sweep: Annotated[Optional[str], typer.Option(help="Robust accuracy vs lambda, e.g. 0.1:0.7:0.2.")] = None,
    square_queries: Annotated[int, typer.Option(help="Square attack queries (AutoAttack's standard: 5000).")] = 5000,
    sanity: Annotated[bool, typer.Option("--sanity/--no-sanity", help="Run the sanity checks.")] = True,
    baseline: Annotated[Optional[str], typer.Option(help="An undefended model for the 'base model falls to 0' check.")] = None,
    save_examples: Annotated[Optional[Path], typer.Option(help="PNG grid of clean / adversarial / perturbation.")] = None,
    preset: Annotated[Optional[AttackPreset], typer.Option(help=ATTACK_PRESET_HELP + ". Flags given win.")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result (every hyperparameter, seed and version) "
                                                         "as JSON.")] = False,
) -> None:
    """Adversarial robustness a reviewer would accept: FGSM, PGD, APGD, Square, AutoAttack, through
    every gradient mode that defeats masking in a CSC model, with sanity checks and intervals. The
    expected cost is printed before the run starts."""
    from ..jobs.attack import AttackConfig, run_attack
    from ..robust.attacks import parse_eps

    given = {name for name in ctx.params if ctx.get_parameter_source(name).name == "COMMANDLINE"}
    config = AttackConfig.with_preset(
        preset, given, model=str(model), dataset=dataset, data_dir=data_dir, eps=parse_eps(eps, norm), norm=norm,
        n=n, batch_size=batch_size, attacks=names(attacks), steps=steps, alpha=alpha, restarts=restarts,
        modes=names(modes), lam=lam, lambda_scale=lambda_scale, lambda_layers=lambda_layers,
        lambda_sweep=grid(lambda_sweep) if lambda_sweep else None, square_queries=square_queries, sanity=sanity,
        baseline=baseline, save_examples=str(save_examples) if save_examples else None, seed=seed, device=device)
    run_and_show(run_attack, config, "attacking", as_json, render.attack, on_other=render.attack_cost)
