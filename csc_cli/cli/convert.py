"""``csc convert``: any timm ConvNet (or model file) becomes a CSC network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..choices import DATASET_HELP
from .app import SDNET_DIGITS, command, console, err_console
from .options import Backward, Json, Method, Units


SOURCE, SELECT, LAYERS, CHECK = "Source", "Which convolutions", "CSC layers", "Check on data"


@command(example=[
    ("The plan: every conv, what happens to it and why:", "csc convert timm:resnet18 --dry-run"),
    ("SDNet's way: the stem only, for 10 classes:",
     "csc convert timm:resnet18 --layers stem --num-classes 10 --out sdnet_stem.safetensors"),
    ("A model file is a source too: csc train's SDNet, every conv of its last stage:",
     f"csc convert {SDNET_DIGITS} --layers 'layer3.*' --out more.safetensors"),
])
def convert(
    source: str = typer.Argument(..., help="timm:NAME (e.g. timm:resnet18) or a csc model file."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the converted model here (.safetensors)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change and write nothing."),
    num_classes: Optional[int] = typer.Option(None, help="Classifier size of the model built.",
                                              rich_help_panel=SOURCE),
    pretrained: bool = typer.Option(False, "--pretrained", help="timm's pretrained weights (needs a network).",
                                    rich_help_panel=SOURCE),
    weights: Optional[Path] = typer.Option(None, help="Local weights: .safetensors or a torch checkpoint.",
                                           rich_help_panel=SOURCE),
    layers: Optional[List[str]] = typer.Option(None, "--layers", help="all, stem or a glob on module names.",
                                               show_default="all", rich_help_panel=SELECT),
    include: Optional[List[str]] = typer.Option(None, "--include", help="Only convs matching this glob.",
                                                rich_help_panel=SELECT),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Skip convs matching this glob.",
                                                rich_help_panel=SELECT),
    kernel_size: Optional[List[int]] = typer.Option(None, "--kernel-size", help="Only convs of this kernel size.",
                                                    rich_help_panel=SELECT),
    depthwise: Optional[bool] = typer.Option(None, "--depthwise/--no-depthwise", help="Only / no depthwise convs.",
                                             rich_help_panel=SELECT),
    lam: Optional[float] = typer.Option(None, "--lambda", "--lam", help="Sparsity weight lambda.", show_default="0.1",
                                        rich_help_panel=LAYERS),
    steps: Optional[int] = typer.Option(None, help="Unrolled FISTA steps K.", show_default="2",
                                        rich_help_panel=LAYERS),
    nonneg: Optional[bool] = typer.Option(None, "--nonneg/--signed", help="Non-negative or signed codes.",
                                          show_default="nonneg", rich_help_panel=LAYERS),
    signed_residuals: bool = typer.Option(False, "--signed-residuals",
                                          help="Signed codes where a conv feeds a residual sum.",
                                          rich_help_panel=LAYERS),
    mu: Optional[float] = typer.Option(None, help="Elastic-net weight.", show_default="0", rich_help_panel=LAYERS),
    method: Optional[Method] = typer.Option(None, help="Solver (heavy_ball: SDNet's K >= 3 update).",
                                            show_default="fista", rich_help_panel=LAYERS),
    backward: Optional[Backward] = typer.Option(None, help="Gradient of the K steps.", show_default="unrolled",
                                                rich_help_panel=LAYERS),
    units: Units = typer.Option("conv", help="Output in the conv's units, or the bare code.",
                                rich_help_panel=LAYERS),
    data: Optional[str] = typer.Option(None, help=f"{DATASET_HELP}.", rich_help_panel=CHECK),
    data_dir: Optional[Path] = typer.Option(None, help="Where the dataset lives.", rich_help_panel=CHECK),
    calibrate_bn: int = typer.Option(0, help="Re-estimate BatchNorm on N images of --data.",
                                     rich_help_panel=CHECK),
    compare_images: int = typer.Option(64, help="Images to compare the outputs on.", rich_help_panel=CHECK),
    as_json: Json = False,
) -> None:
    """Turn a ConvNet's convolutions into CSC layers.

    The conv weights become the dictionaries. The report gives every conv's fate and the reason,
    how far the outputs moved (on --data, or seeded noise) and the share of non-zero codes per
    layer; --out saves the model file. --layers, --include, --exclude and --kernel-size can be
    given more than once. Without --pretrained or --weights a timm: source has random weights.

    --units conv: each CSC layer answers in its conv's units (code x ||atom|| / t), so what
    follows keeps its scale -- one signed step at lambda 0 is the conv itself; code: the bare
    sparse code, as SDNet's layers. --signed-residuals: signed codes for the convs whose output
    reaches a residual sum before any activation (a non-negative code cannot subtract from its
    shortcut), non-negative elsewhere; the plan says which and why. --backward: unrolled (autograd through the K steps), implicit
    (at the fixed point: memory independent of K) or recompute (unrolled, recomputed in backward).
    """
    from ..jobs.convert import ConvertConfig, run_convert

    if signed_residuals:
        if nonneg is False:
            raise ValueError("--signed already makes every code signed: drop --signed-residuals or --signed")
        nonneg = "auto"  # type: ignore[assignment]
    options = {k: v for k, v in dict(lam=lam, steps=steps, nonneg=nonneg, mu=mu, method=method,
                                     backward=backward, units=units).items() if v is not None}
    if not dry_run and out is None and not as_json:
        err_console.print("note: no --out given, the converted model is not written (use --dry-run to only plan)")
    if out is not None and out.exists() and out.is_dir():
        raise ValueError(f"--out {out} is a directory: give a file name ending in .safetensors")
    config = ConvertConfig(source=source, layers=list(layers or ["all"]), include=list(include or []),
                           exclude=list(exclude or []), kernel_sizes=list(kernel_size) if kernel_size else None,
                           depthwise=depthwise, csc_options=options, num_classes=num_classes,
                           pretrained=pretrained, weights=weights, dry_run=dry_run, out=out,
                           calibrate_bn=calibrate_bn, data=data, data_dir=data_dir, compare_images=compare_images)
    result = run_convert(config)
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
        return
    _render_convert(result)


def _geometry_text(entry: dict) -> str:
    k = "x".join(map(str, entry["kernel_size"]))
    s = "x".join(map(str, entry["stride"]))
    pad = entry["padding"] if isinstance(entry["padding"], str) else ",".join(map(str, entry["padding"]))
    text = f"k{k} s{s} p{pad}"
    if any(d != 1 for d in entry["dilation"]):
        text += " d" + "x".join(map(str, entry["dilation"]))
    if entry["groups"] != 1:
        text += f" g{entry['groups']}"
    if entry["padding_mode"] != "zeros":
        text += f" {entry['padding_mode']}"
    return text


def _render_convert(result) -> None:
    plan = result.plan
    title = f"Conversion plan for {result.arch} ({'dry run: nothing changed' if result.dry_run else 'applied'})"
    table = Table(title=title)
    for col in ("module", "type", "in->out", "geometry", "action", "reason"):
        table.add_column(col, overflow="fold")
    colours = {"replace": "green", "skip": "yellow", "keep": "cyan"}
    for e in plan["entries"]:
        name = e["name"] + (f" (+{len(e['aliases'])} aliases)" if e["aliases"] else "")
        table.add_row(name, e["kind"], f"{e['in_channels']}->{e['out_channels']}", _geometry_text(e),
                      f"[{colours[e['action']]}]{e['action']}[/]", e["reason"])
    console.print(table)
    counts = plan["counts"]
    console.print(f"{counts['replace']} replaced, {counts['skip']} skipped, {counts['keep']} already CSC; "
                  f"parameters {result.parameters_before:,} -> {result.parameters_after:,}")
    for note in plan["notes"]:
        console.print(f"note: {note}")
    if result.calibrated_batchnorms:
        console.print(f"BatchNorm statistics re-estimated in {result.calibrated_batchnorms} layers")
    if result.distance:
        _render_report(result.distance)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    if result.out:
        console.print(f"wrote {result.out}")


def _model_row(summary: dict) -> list:
    accuracy = f"{100 * summary['accuracy']:.1f}%" if "accuracy" in summary else "-"
    return [accuracy, f"{summary['entropy']:.3f} / {summary['max_entropy']:.3f}", str(summary["distinct_predictions"]),
            f"{100 * summary['top_class_share']:.0f}%"]


def _render_report(d: dict) -> None:
    table = Table(title=f"Converted vs original on {d['on']}")
    for col in ("model", "top-1 (labels)", "entropy / max (nats)", "classes predicted", "top class share"):
        table.add_column(col)
    table.add_row("original", *_model_row(d["source"]))
    table.add_row("converted", *_model_row(d["converted"]))
    console.print(table)
    console.print(f"top-1 agreement {100 * d['top1_agreement']:.1f}%, KL(original || converted) {d['kl']:.4g}")
    density = d["layers"]
    if density:
        values = sorted(density.values())
        console.print(f"non-zero codes per CSC layer: min {100 * values[0]:.1f}%, median "
                      f"{100 * values[len(values) // 2]:.1f}%, max {100 * values[-1]:.1f}% over {len(values)} layers"
                      + (f" ({len(d['dead_layers'])} dead)" if d["dead_layers"] else ""))
