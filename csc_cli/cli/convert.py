"""``csc convert``: any timm ConvNet (or model file) becomes a CSC network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ..choices import DATASET_HELP
from .app import app, console, err_console
from .options import BACKWARD_HELP, Backward, Json, Method, Units


@app.command()
def convert(
    source: str = typer.Argument(..., help="timm:NAME (e.g. timm:resnet18) or a csc model file."),
    layers: Optional[List[str]] = typer.Option(None, "--layers", help="all, stem, or a glob on module names (repeatable). Default: all."),
    include: Optional[List[str]] = typer.Option(None, "--include", help="Only convs matching this glob (repeatable)."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Skip convs matching this glob (repeatable)."),
    kernel_size: Optional[List[int]] = typer.Option(None, "--kernel-size", help="Only convs with this kernel size (repeatable)."),
    depthwise: Optional[bool] = typer.Option(None, "--depthwise/--no-depthwise", help="Only / no depthwise convs."),
    lam: Optional[float] = typer.Option(None, "--lambda", "--lam", help="Sparsity weight (default 0.1)."),
    steps: Optional[int] = typer.Option(None, help="Unrolled FISTA steps K (default 2)."),
    nonneg: Optional[bool] = typer.Option(None, "--nonneg/--signed", help="Non-negative codes (default) or signed."),
    mu: Optional[float] = typer.Option(None, help="Elastic-net weight (default 0)."),
    method: Optional[Method] = typer.Option(None, help="Solver steps (default fista; heavy_ball: the SDNet authors' K >= 3 update)."),
    backward: Optional[Backward] = typer.Option(None, help=BACKWARD_HELP + " Default: unrolled."),
    units: Units = typer.Option("conv", help="conv: each CSC layer answers in its conv's units (code x ||atom|| / t), "
                                "so what follows keeps its scale -- one signed step at lambda 0 is the conv itself; "
                                "code: the bare sparse code, as SDNet's layers."),
    num_classes: Optional[int] = typer.Option(None, help="Classifier size of the model built."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start from timm's pretrained weights (needs a network)."),
    weights: Optional[Path] = typer.Option(None, help="Local weights: .safetensors or a torch checkpoint (read with weights_only)."),
    calibrate_bn: int = typer.Option(0, help="Re-estimate BatchNorm statistics on this many images of --data."),
    data: Optional[str] = typer.Option(None, help=f"Dataset for BN calibration and the comparison: {DATASET_HELP}."),
    data_dir: Optional[Path] = typer.Option(None, help="Where the dataset lives."),
    compare_images: int = typer.Option(64, help="Images on which converted and original outputs are compared."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change and write nothing."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the converted model here (.safetensors)."),
    as_json: Json = False,
) -> None:
    """Turn a ConvNet's convolutions into CSC layers (the conv weights become the dictionaries),
    report what was converted and skipped, how far the outputs moved, and save a model file."""
    from ..jobs.convert import ConvertConfig, run_convert

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
