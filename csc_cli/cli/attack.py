"""``csc attack``: adversarial robustness that survives scrutiny."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..choices import ATTACKS, GRADIENT_MODES, RULE_MODES
from . import render
from .app import SDNET_DIGITS, command
from .options import (DATA_PANEL, LAMBDA_PANEL, AttackPreset, DataDir, Device, EvalDataset, LamLayers, LamPolicy,
                      LamScale, ModelFile, Seed, grid, names)
from .progress import run_and_show


THREAT, ATTACKS_PANEL, CHECKS = "Threat model", "Attacks", "Sanity checks"


@command(example=[
    ("csc train's SDNet under l_inf attacks at 8/255, 100 test images:", f"csc attack {SDNET_DIGITS}"),
    ("A first look in minutes: FGSM and PGD-10 through the unrolled gradient:",
     f"csc attack {SDNET_DIGITS} --preset quick"),
    ("A raised test-time lambda as a defence, the plain ResNet as the baseline:",
     f"csc attack {SDNET_DIGITS} --lambda 0.4 --baseline runs/digits-resnet20_cifar-none/model.safetensors"),
])
def attack(
    ctx: typer.Context,
    model: ModelFile,
    dataset: EvalDataset = None,
    preset: Annotated[Optional[AttackPreset], typer.Option(help="Named defaults; flags given win.")] = None,
    batch_size: Annotated[int, typer.Option(help="Attack batch size.")] = 100,
    save_examples: Annotated[Optional[Path], typer.Option(help="PNG: clean / adversarial / perturbation.")] = None,
    seed: Seed = 0,
    device: Device = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result (every setting, seed, version) as "
                                                         "JSON.")] = False,
    data_dir: DataDir = None,
    n: Annotated[int, typer.Option("--n", help="Test images (a fixed, seeded subset).",
                                   rich_help_panel=DATA_PANEL)] = 100,
    eps: Annotated[str, typer.Option(help="Budget in pixel units of [0, 1] images.", rich_help_panel=THREAT)] = "8/255",
    norm: Annotated[str, typer.Option(help="Threat model (case-insensitive).", metavar="<Linf|L2>",
                                      rich_help_panel=THREAT)] = "Linf",
    attacks: Annotated[str, typer.Option(help=f"Comma-separated: {', '.join(ATTACKS)}.",
                                         rich_help_panel=ATTACKS_PANEL)] = "fgsm,pgd,apgd-ce,apgd-dlr,square",
    steps: Annotated[int, typer.Option(help="PGD steps.", rich_help_panel=ATTACKS_PANEL)] = 20,
    alpha: Annotated[Optional[float], typer.Option(help="PGD step size.", show_default="2.5 * eps / steps",
                                                   rich_help_panel=ATTACKS_PANEL)] = None,
    restarts: Annotated[int, typer.Option(help="PGD random restarts.", rich_help_panel=ATTACKS_PANEL)] = 1,
    modes: Annotated[Optional[str], typer.Option(
        help=f"Gradient modes: {', '.join(GRADIENT_MODES + RULE_MODES)}.", show_default="all that apply",
        rich_help_panel=ATTACKS_PANEL)] = None,
    square_queries: Annotated[int, typer.Option(help="Square attack queries (AutoAttack's).",
                                                rich_help_panel=ATTACKS_PANEL)] = 5000,
    lam: LamPolicy = None,
    lambda_scale: LamScale = None,
    lambda_layers: LamLayers = "first",
    lambda_sweep: Annotated[Optional[str], typer.Option(help="Robust accuracy vs lambda, e.g. 0.1:0.7:0.2.",
                                                        rich_help_panel=LAMBDA_PANEL)] = None,
    sanity: Annotated[bool, typer.Option("--sanity/--no-sanity", help="Run the sanity checks.",
                                         rich_help_panel=CHECKS)] = True,
    baseline: Annotated[Optional[str], typer.Option(help="An undefended model: it must fall to 0.",
                                                    rich_help_panel=CHECKS)] = None,
) -> None:
    """Measure adversarial robustness, checked against gradient masking.

    FGSM, PGD, APGD-CE, APGD-DLR, Square and AutoAttack, through every gradient mode that defeats
    masking in a CSC model (--modes), with sanity checks and confidence intervals; the expected
    cost is printed before the run starts. --eps is 8/255 or 0.5 style, --norm Linf or L2.

    --preset quick: FGSM + PGD-10 through the unrolled gradient only, with the sanity checks --
    minutes instead of hours, a first look and not a robustness claim. --lambda, --lambda-scale and
    --lambda-layers mean the same as in csc eval; --lambda auto attacks through the model's rule.
    """
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
