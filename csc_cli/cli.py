"""The ``csc`` command line: parse arguments, call a job, render its result. Nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__

app = typer.Typer(
    name="csc",
    help="Convolutional sparse coding for real vision models (SDNet, CSC-CTRL).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Convolutional sparse coding for real vision models (SDNet, CSC-CTRL)."""


@app.command()
def version() -> None:
    """Print the versions of csc and of the libraries it runs on."""
    import torch

    table = Table(show_header=False, box=None)
    table.add_row("csc", __version__)
    table.add_row("torch", torch.__version__)
    table.add_row("cuda available", str(torch.cuda.is_available()))
    console.print(table)


def _floats(text: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@app.command()
def demo(
    lam: float = typer.Option(0.1, "--lambda", "--lam", help="Sparsity weight of the CSC layer."),
    steps: int = typer.Option(2, help="Unrolled FISTA steps (K) in the layer."),
    atoms: int = typer.Option(16, help="Number of dictionary atoms (output channels)."),
    kernel_size: int = typer.Option(5, help="Atom size in pixels."),
    epochs: int = typer.Option(3, help="Passes over the training digits when learning the atoms."),
    max_images: Optional[int] = typer.Option(None, help="Use only this many digits (quick runs)."),
    lam_grid: str = typer.Option("0.02,0.05,0.1,0.2,0.4", help="Lambdas for the sparsity table."),
    seed: int = typer.Option(0, help="Random seed."),
    out: Optional[Path] = typer.Option(None, help="Write atoms.png and reconstructions.png here."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Learn a convolutional dictionary on the built-in digits and show what a CSC layer does:
    sparsity and reconstruction vs lambda, distance of K steps to the converged code, and the
    K = 1 identity (conv + fixed bias + ReLU). Runs offline in under a minute on 2 cores."""
    from .jobs.demo import DemoConfig, run_demo

    config = DemoConfig(lam=lam, steps=steps, atoms=atoms, kernel_size=kernel_size, epochs=epochs,
                        max_images=max_images, lam_grid=_floats(lam_grid), seed=seed, out=out)
    if as_json:
        result = run_demo(config)
        console.print_json(json.dumps(result.to_dict()))
        return
    with _progress() as bar:
        task = bar.add_task("learning atoms", total=None)
        result = run_demo(config, lambda stage, done, total: bar.update(task, description=stage,
                                                                           completed=done, total=total))
    _render_demo(result)


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
    method: Optional[str] = typer.Option(None, help="fista, ista or heavy_ball."),
    backward: Optional[str] = typer.Option(None, help="unrolled or implicit."),
    num_classes: Optional[int] = typer.Option(None, help="Classifier size of the model built."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start from timm's pretrained weights (needs a network)."),
    weights: Optional[Path] = typer.Option(None, help="Local weights: .safetensors or a torch checkpoint (read with weights_only)."),
    calibrate_bn: int = typer.Option(0, help="Re-estimate BatchNorm statistics on this many images of --data."),
    data: Optional[str] = typer.Option(None, help="Dataset for BN calibration and the comparison: cifar10, cifar100, digits, fake."),
    data_dir: Optional[Path] = typer.Option(None, help="Where the dataset lives."),
    compare_images: int = typer.Option(16, help="Images on which converted and original outputs are compared."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; change and write nothing."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the converted model here (.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Turn a ConvNet's convolutions into CSC layers (the conv weights become the dictionaries),
    report what was converted and skipped, how far the outputs moved, and save a model file."""
    from .jobs.convert import ConvertConfig, run_convert

    options = {k: v for k, v in dict(lam=lam, steps=steps, nonneg=nonneg, mu=mu, method=method,
                                     backward=backward).items() if v is not None}
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
        d = result.distance
        console.print(f"converted vs original on {d['on']}: top-1 agreement {100 * d['top1_agreement']:.1f}%, "
                      f"KL {d['kl']:.4g}")
    if result.out:
        console.print(f"wrote {result.out}")


def _load_recipe(path: Path) -> dict:
    import tomllib

    from .jobs.train import config_fields

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"recipe {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"recipe {path} is not valid TOML: {exc}") from None
    fields = config_fields()
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"recipe {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}")
    for key, value in data.items():
        default = fields[key]
        expected = type(default) if default is not None else None
        if expected is bool and not isinstance(value, bool):
            raise ValueError(f"recipe {path}: {key} must be true or false, got {value!r}")
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"recipe {path}: {key} must be an integer, got {value!r}")
        if expected is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"recipe {path}: {key} must be a number, got {value!r}")
        if expected is str and not isinstance(value, str):
            raise ValueError(f"recipe {path}: {key} must be a string, got {value!r}")
        if expected is list and not (isinstance(value, list) and all(isinstance(v, int) for v in value)):
            raise ValueError(f"recipe {path}: {key} must be a list of integers, got {value!r}")
    return data


@app.command()
def train(
    dataset: Optional[str] = typer.Argument(None, help="digits (default, offline), cifar10, cifar100, imagenet, folder:PATH, fake."),
    data_dir: Optional[str] = typer.Option(None, help="Where the dataset lives (CIFAR: the extracted batches)."),
    recipe: Optional[Path] = typer.Option(None, help="A TOML recipe (see recipes/); flags override its values."),
    arch: Optional[str] = typer.Option(None, help="resnet18_cifar, resnet34_cifar, resnet20_cifar or any timm ConvNet; on images up to 64 px resnet18/34 mean the CIFAR layout (timm:resnet18 for timm's)."),
    csc: Optional[str] = typer.Option(None, help="stem (SDNet), all (SDNet-All) or none (the plain ConvNet)."),
    shortcut: Optional[bool] = typer.Option(None, "--shortcut/--no-shortcut", help="No-shortcut SDNet-All (CIFAR ResNets)."),
    lam: Optional[float] = typer.Option(None, "--lambda", "--lam", help="Sparsity weight of the CSC layers."),
    steps: Optional[int] = typer.Option(None, help="Unrolled FISTA steps K."),
    backward: Optional[str] = typer.Option(None, help="unrolled or implicit."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (per process)."),
    optimizer: Optional[str] = typer.Option(None, help="sgd or adamw."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum."),
    nesterov: Optional[bool] = typer.Option(None, "--nesterov/--no-nesterov", help="Nesterov momentum."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay."),
    schedule: Optional[str] = typer.Option(None, help="cosine (per iteration), step or constant."),
    milestones: Optional[str] = typer.Option(None, help="Epochs at which a step schedule decays, e.g. 30,60,90."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warm-up, in epochs."),
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing."),
    augment: Optional[str] = typer.Option(None, help="auto, none, crop, crop_flip or imagenet."),
    ema: Optional[float] = typer.Option(None, help="EMA decay of the weights (0: off)."),
    clip_grad: Optional[float] = typer.Option(None, help="Gradient norm clipping (0: off)."),
    amp: Optional[str] = typer.Option(None, help="none, bf16 or fp16 (CUDA)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="channels_last memory format."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic", help="Deterministic algorithms."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:1 ..."),
    val_split: Optional[float] = typer.Option(None, help="Hold out this fraction of the training data for selection."),
    select: Optional[str] = typer.Option(None, help="last, or best (on the held-out split; needs --val-split)."),
    out: Optional[str] = typer.Option(None, help="Output directory (default runs/<dataset>-<arch>-<csc>)."),
    init: Optional[str] = typer.Option(None, help="Fine-tune this model file (e.g. from csc convert)."),
    resume: Optional[str] = typer.Option(None, help="Resume from a state.safetensors."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Also save resumable state every N steps."),
    max_batches: Optional[int] = typer.Option(None, help="At most this many batches per epoch (smoke tests)."),
    image_size: Optional[int] = typer.Option(None, help="Image size (digits: 16; folders: 224)."),
    workers: Optional[int] = typer.Option(None, help="Loader processes for image folders."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train an SDNet (or the plain ConvNet) on a dataset: `csc train` alone trains SDNet on the
    built-in digits in well under a minute. Writes metrics, the resolved config, resumable state
    and a self-describing model file."""
    from .jobs.train import TrainConfig, run_train

    values = _load_recipe(recipe) if recipe else {}
    given = dict(dataset=dataset, data_dir=data_dir, arch=arch, csc=csc, shortcut=shortcut, lam=lam, steps=steps,
                 backward=backward, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                 momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, schedule=schedule,
                 milestones=[int(m) for m in _floats(milestones)] if milestones else None,
                 warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, augment=augment, ema=ema,
                 clip_grad=clip_grad, amp=amp, channels_last=channels_last, compile=compile, seed=seed,
                 deterministic=deterministic, device=device, val_split=val_split, select=select, out=out,
                 init=init, resume=resume, checkpoint_every=checkpoint_every, max_batches=max_batches,
                 image_size=image_size, workers=workers)
    values.update({k: v for k, v in given.items() if v is not None})
    config = TrainConfig(**values)
    if "out" not in values:
        config.out = f"runs/{config.dataset}-{config.arch}-{config.csc}"
    if as_json:
        result = run_train(config)
        console.print_json(json.dumps(result.to_dict()))
        return
    _train_with_progress(config, run_train)


def _train_with_progress(config, run_train) -> None:
    table = Table(title=f"{config.arch} (csc={config.csc}) on {config.dataset}")
    for col in ("epoch", "lr", "train loss", "train acc", "test acc", "val acc", "img/s", "CSC non-zeros", "step t"):
        table.add_column(col, justify="right")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("starting", total=None, stats="")

        def progress(kind: str, info: dict) -> None:
            if kind == "start":
                for note in info.get("notes", []):
                    console.print(f"note: {note}")
                console.print(f"{info['arch']}: {info['parameters']:,} parameters on {info['device']}, "
                              f"{info['train_images']} training images, {info['steps_per_epoch']} steps per epoch")
            elif kind == "epoch_start":
                bar.reset(task, total=info["batches"], completed=info["first_batch"],
                          description=f"epoch {info['epoch'] + 1}/{config.epochs}")
            elif kind == "batch":
                bar.update(task, completed=info["batch"], stats=f"loss {info['loss']:.3f} acc {100 * info['acc']:.1f}% "
                                                                 f"{info['images_per_s']:.0f} img/s")
            elif kind == "epoch_end":
                layers = info.get("csc_layers", {})
                nz = "/".join(f"{100 * v['nonzero']:.0f}%" for v in list(layers.values())[:3]) or "-"
                step_t = f"{next(iter(layers.values()))['step_size']:.3g}" if layers else "-"
                table.add_row(str(info["epoch"]), f"{info['lr']:.3g}", f"{info['train_loss']:.3f}",
                              f"{100 * info['train_acc']:.1f}%", f"{100 * info['test_acc']:.2f}%",
                              f"{100 * info['val_acc']:.2f}%" if "val_acc" in info else "-",
                              f"{info['images_per_s']:.0f}", nz, step_t)
                bar.console.print(f"epoch {info['epoch']}: test accuracy {100 * info['test_acc']:.2f}%")

        result = run_train(config, progress)
    console.print(table)
    last = result.last
    console.print(f"last epoch: test accuracy {100 * last['test_acc']:.2f}%")
    if result.best:
        console.print(f"best on the held-out split: epoch {result.best['epoch']} (val {100 * result.best['val_acc']:.2f}%, "
                      f"test {100 * result.best['test_acc']:.2f}%)")
    console.print(f"wrote {result.model_path} and metrics in {result.out} ({result.seconds:.0f} s)")


def _grid(text: str) -> List[float]:
    """'0.1:1.4:0.1' (inclusive) or '0.1,0.3,0.5'."""
    if ":" in text:
        try:
            start, stop, step = (float(v) for v in text.split(":"))
        except ValueError:
            raise typer.BadParameter(f"expected start:stop:step, got {text!r}") from None
        if step <= 0 or stop < start:
            raise typer.BadParameter(f"expected start <= stop and step > 0, got {text!r}")
        n = int(round((stop - start) / step)) + 1
        return [round(start + i * step, 10) for i in range(n)]
    return _floats(text)


@app.command("eval")
def eval_(
    model: Path = typer.Argument(..., help="A csc model file (.safetensors)."),
    dataset: Optional[str] = typer.Argument(None, help="Default: the dataset the model was trained on."),
    data_dir: Optional[str] = typer.Option(None, help="Where the dataset lives."),
    batch_size: int = typer.Option(256, help="Evaluation batch size."),
    max_images: Optional[int] = typer.Option(None, help="A seeded subset of the test split."),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
    amp: str = typer.Option("none", help="none, bf16 or fp16."),
    corruptions: Optional[List[str]] = typer.Option(None, "--corruptions", "-c",
                                                    help="Corruption names, or all / standard / extra / noise (repeatable, comma-separated)."),
    severities: str = typer.Option("1,2,3,4,5", help="Severities to evaluate (1-5)."),
    corruption_dir: Optional[str] = typer.Option(None, help="Read CIFAR-10-C/100-C .npy or ImageNet-C folders instead of generating."),
    baseline: Optional[str] = typer.Option(None, help="A model file to compute mCE and relative mCE against."),
    lam: Optional[str] = typer.Option(None, "--lambda", help="auto, a number (first CSC layer) or layer=value,..."),
    lambda_scale: Optional[float] = typer.Option(None, help="Multiply the trained lambda by this."),
    lambda_layers: str = typer.Option("first", help="Layers --lambda-scale applies to: first or all."),
    lambda_sweep: Optional[str] = typer.Option(None, help="Lambdas for the first CSC layer, e.g. 0.1:1.4:0.1 (reports the oracle)."),
    calibrate_lambda: bool = typer.Option(False, "--calibrate-lambda", help="Fit lambda = a*r(x)+b on corrupted training images and store it."),
    calibration_images: int = typer.Option(512, help="Training images used to calibrate."),
    calibration_corruptions: str = typer.Option("gaussian_noise", help="Corruptions used to calibrate."),
    out: Optional[str] = typer.Option(None, help="Write the calibrated model here (default: MODEL's name + .calibrated.safetensors)."),
    in_place: bool = typer.Option(False, "--in-place", help="Store the calibrated rule in MODEL itself instead of a new file."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write every accuracy as CSV rows here."),
    plots: Optional[Path] = typer.Option(None, help="Write PNG figures into this folder."),
    seed: int = typer.Option(0, help="Seed for subsets and corruptions."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Evaluate a model: clean accuracy, corruption robustness, test-time lambda (as trained,
    oracle, auto)."""
    from .jobs.evaluate import EvalConfig, run_eval

    if not model.exists():
        raise ValueError(f"model file {model} does not exist")
    sev = [int(v) for v in _floats(severities)] if severities else [1, 2, 3, 4, 5]
    config = EvalConfig(model=str(model), dataset=dataset, data_dir=data_dir, batch_size=batch_size,
                        max_images=max_images, device=device, amp=amp, corruptions=list(corruptions or []),
                        severities=sev, corruption_dir=corruption_dir, baseline=baseline, lam=lam,
                        lambda_scale=lambda_scale, lambda_layers=lambda_layers,
                        lambda_sweep=_grid(lambda_sweep) if lambda_sweep else None,
                        calibrate_lambda=calibrate_lambda, calibration_images=calibration_images,
                        calibration_corruptions=[c for c in calibration_corruptions.split(",") if c], out=out,
                        in_place=in_place,
                        seed=seed)
    if as_json:
        result = run_eval(config).to_dict()
    else:
        with _progress() as bar:
            task = bar.add_task("evaluating", total=None)

            def progress(kind: str, info: dict) -> None:
                if "total" in info:
                    bar.update(task, description=kind, completed=info["done"], total=info["total"])

            result = run_eval(config, progress).to_dict()
    files = []
    if csv is not None:
        _write_eval_csv(result, csv)
        files.append(str(csv))
    if plots is not None:
        from .plots import eval_figures

        files += eval_figures(result, plots)
    result["files"] = files
    if as_json:
        console.print_json(json.dumps(result))
        return
    _render_eval(result)


def _write_eval_csv(result: dict, path: Path) -> None:
    import csv as csvlib

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csvlib.writer(fh)
        w.writerow(["kind", "corruption", "severity", "mode", "lambda", "accuracy"])
        clean = result["clean"]
        w.writerow(["clean", "", "", result["lam"]["mode"], "", clean["top1"]])
        for i, acc in enumerate(clean["per_class"]):
            w.writerow(["class", clean["class_names"][i], "", result["lam"]["mode"], "", acc])
        table = result.get("corruptions") or {}
        for mode, acc in [(result["lam"]["mode"], table.get("accuracy", {}))] + [
                (k, table[k]["accuracy"]) for k in ("oracle", "auto") if k in table]:
            for name, per in acc.items():
                for s, a in per.items():
                    lam = table["oracle"]["lam"][name][s] if mode == "oracle" else ""
                    w.writerow(["corruption", name, s, mode, lam, a])
        sweep = result.get("sweep") or {}
        for name, per in sweep.get("accuracy", {}).items():
            for s, accs in per.items():
                for lam, a in zip(sweep["grid"], accs):
                    w.writerow(["sweep", name, s, "fixed", lam, a])


def _render_eval(result: dict) -> None:
    clean = result["clean"]
    mode = result["lam"]["mode"]
    console.print(f"[bold]{result['model']}[/] on {result['dataset']} ({result['images']} test images), "
                  f"lambda: {mode}" + (f" {result['lam'].get('values')}" if result['lam'].get('values') else ""))
    t = Table(title="Clean")
    for col in ("top-1", "top-5", "loss"):
        t.add_column(col, justify="right")
    t.add_row(f"{100 * clean['top1']:.2f}%", f"{100 * clean['top5']:.2f}%", f"{clean['loss']:.4f}")
    console.print(t)
    if len(clean["per_class"]) <= 20:
        pc = Table(title="Per class (top-1)")
        for name in clean["class_names"]:
            pc.add_column(str(name)[:10], justify="right")
        pc.add_row(*[f"{100 * a:.1f}" if a is not None else "-" for a in clean["per_class"]])
        console.print(pc)
    cal = result.get("calibration")
    if cal:
        console.print(f"calibrated on {cal['images']} corrupted training images: lambda = {cal['a']:.4g} * r + "
                      f"{cal['b']:.4g} for {cal['layer']} (written to {cal['written_to']})")
    table = result.get("corruptions")
    if table:
        sev = [str(s) for s in table["severities"]]
        ct = Table(title=f"Accuracy under corruption (%), lambda {mode}")
        ct.add_column("corruption")
        for s in sev:
            ct.add_column(f"s{s}", justify="right")
        ct.add_column("mean", justify="right")
        extra = [k for k in ("oracle", "auto") if k in table]
        for k in extra:
            ct.add_column(f"{k} mean", justify="right")
        for name, per in table["accuracy"].items():
            row = [name] + [f"{100 * per[s]:.1f}" for s in sev] + [f"{100 * table['mean'][name]:.1f}"]
            row += [f"{100 * table[k]['mean'][name]:.1f}" for k in extra]
            ct.add_row(*row)
        console.print(ct)
        console.print(f"mean accuracy {100 * table['mean_accuracy']:.2f}%, mean corruption error "
                      f"{100 * table['mean_corruption_error']:.2f}%")
        for k in extra:
            console.print(f"{table[k]['label'] if 'label' in table[k] else k}")
    base = result.get("baseline")
    if base:
        console.print(f"vs baseline {base['model']}: mCE {100 * base['mce']:.1f}%, relative mCE "
                      f"{100 * base['relative_mce']:.1f}%")
    sweep = result.get("sweep")
    if sweep:
        st = Table(title=f"Lambda sweep on {sweep['layer']} (trained {sweep['trained_lam']:g}): best lambda per level "
                         "(oracle: chosen on the test data)")
        for col in ("level", "best lambda", "accuracy at best", "accuracy as trained", "r(x)"):
            st.add_column(col, justify="right")
        grid = sweep["grid"]
        trained_idx = min(range(len(grid)), key=lambda i: abs(grid[i] - sweep["trained_lam"]))
        for name, per in sweep["accuracy"].items():
            for s, accs in per.items():
                level = name if s == "0" else f"{name} s{s}"
                st.add_row(level, f"{sweep['best_lam'][name][s]:g}", f"{100 * max(accs):.1f}",
                           f"{100 * accs[trained_idx]:.1f}", f"{sweep['r'][name][s]:.4g}")
        console.print(st)
    for note in result.get("notes", []):
        console.print(f"note: {note}")
    for path in result.get("files", []):
        console.print(f"wrote {path}")


@app.command()
def inspect(
    model: Path = typer.Argument(..., help="A csc model file (.safetensors)."),
    out: Path = typer.Option(Path("inspect"), help="Folder for the PNG files."),
    data: Optional[str] = typer.Option(None, help="Dataset to draw images from (default: the model's)."),
    data_dir: Optional[str] = typer.Option(None, help="Where the dataset lives."),
    images: int = typer.Option(64, help="How many test images to code."),
    image: Optional[List[Path]] = typer.Option(None, "--image", help="Use these image files instead (repeatable)."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", help="Only these CSC layers (repeatable)."),
    lambda_scales: str = typer.Option("0.5,1,2,4", help="Lambda multiples for the sparsity-vs-lambda statistics."),
    max_steps: int = typer.Option(50, help="Steps K for the convergence curves."),
    seed: int = typer.Option(0, help="Seed for the image subset."),
    as_json: bool = typer.Option(False, "--json", help="Print every number as JSON."),
) -> None:
    """See what a sparse model learned: model card, dictionary atoms, sparse codes, reconstructions,
    layer-by-layer push-back (all-CSC no-shortcut models) and convergence of the K steps."""
    from .jobs.inspect import InspectConfig, run_inspect

    if not model.exists():
        raise ValueError(f"model file {model} does not exist")
    if images < 1 or max_steps < 1:
        raise ValueError("--images and --max-steps must be >= 1")
    config = InspectConfig(model=str(model), out=str(out), dataset=data, data_dir=data_dir, images=images,
                           image_files=[str(p) for p in image or []], layers=list(layer or []),
                           lambda_scales=_floats(lambda_scales), max_steps=max_steps, seed=seed)
    result = run_inspect(config).to_dict()
    if as_json:
        console.print_json(json.dumps(result))
        return
    _render_inspect(result)


def _render_inspect(result: dict) -> None:
    card = result["card"]
    console.print(f"[bold]{result['model']}[/]: {card['arch']}, {card['parameters']:,} parameters, "
                  f"{len(card['csc_layers'])} CSC layer(s), {card['convs']} plain conv(s)")
    if card.get("training"):
        t = card["training"]
        console.print(f"training: {json.dumps({k: v for k, v in t.items() if not isinstance(v, (dict, list))})}")
    if card["csc_layers"]:
        table = Table(title="CSC layers")
        for col in ("layer", "in->out", "kernel/stride", "lambda", "K", "step t", "L", "atoms", "coherence", "unit norm"):
            table.add_column(col, justify="right")
        for c in card["csc_layers"]:
            table.add_row(c["name"], f"{c['in_channels']}->{c['out_channels']}",
                          f"{'x'.join(map(str, c['kernel_size']))}/{'x'.join(map(str, c['stride']))}",
                          f"{c['lam']:g}", str(c["steps"]),
                          f"{c['step_size']:.4g}" if c["step_size"] else "-", f"{c['lipschitz']:.4g}" if c["lipschitz"] else "-",
                          f"{c['dictionary_size']:,}",
                          f"{c['coherence']:.3f}" + (f" ({c['shift_coherence']:.3f} shifted)" if "shift_coherence" in c else ""),
                          "yes" if c["atoms_unit_norm"] else "NO")
        console.print(table)
    codes = result.get("codes")
    if codes:
        t = Table(title=f"Sparse codes on {codes['images']}")
        for col in ("layer", "non-zeros", "dead atoms", "relative recon. error", "gap at model K"):
            t.add_column(col, justify="right")
        for name, c in codes["layers"].items():
            rec = result["reconstruction"]["layers"][name]["relative_error"]
            gap = result["convergence"]["layers"][name]["gap_at_model_steps"]
            t.add_row(name, f"{100 * c['nonzero']:.1f}%", str(len(c["dead_atoms"])), f"{rec:.3f}", f"{gap:.2e}")
        console.print(t)
        sweep = result["sparsity_vs_lambda"]
        s = Table(title="Non-zero codes as lambda varies (x trained lambda)")
        s.add_column("layer")
        for scale in sweep["scales"]:
            s.add_column(f"x{scale:g}", justify="right")
        for name, values in sweep["layers"].items():
            s.add_row(name, *[f"{100 * v:.1f}%" for v in values])
        console.print(s)
    if result.get("pushback"):
        pb = result["pushback"]
        console.print("push-back to image space, relative error per depth: "
                      + ", ".join(f"{n} {e:.3f}" for n, e in list(pb["relative_error"].items())[:6])
                      + (" ..." if len(pb["relative_error"]) > 6 else ""))
    for note in result.get("notes", []):
        console.print(f"note: {note}")
    for path in result.get("images", []):
        console.print(f"wrote {path}")


@app.command()
def attack(
    model: Path = typer.Argument(..., help="A csc model file (.safetensors)."),
    dataset: Optional[str] = typer.Argument(None, help="Default: the dataset the model was trained on."),
    data_dir: Optional[str] = typer.Option(None, help="Where the dataset lives."),
    eps: str = typer.Option("8/255", help="Perturbation budget in pixel units of [0, 1] images, e.g. 8/255 or 0.5."),
    norm: str = typer.Option("Linf", help="Threat model: Linf or L2 (case-insensitive)."),
    n: int = typer.Option(100, "--n", help="Number of test examples (a fixed, seeded subset)."),
    batch_size: int = typer.Option(100, help="Attack batch size."),
    attacks: str = typer.Option("fgsm,pgd,apgd-ce,apgd-dlr,square", help="Comma-separated: fgsm, pgd, apgd-ce, apgd-dlr, square, autoattack."),
    steps: int = typer.Option(20, help="PGD steps."),
    alpha: Optional[float] = typer.Option(None, help="PGD step size (default 2.5 * eps / steps)."),
    restarts: int = typer.Option(1, help="PGD random restarts."),
    modes: Optional[str] = typer.Option(None, help="Gradient modes (default: all that apply): unrolled, implicit, smooth, more-steps, bpda, through-rule."),
    lam: Optional[str] = typer.Option(None, "--lambda", help="Test-time lambda of the defence: auto, a number (first CSC layer) or layer=value,..."),
    lambda_scale: Optional[float] = typer.Option(None, help="Multiply the trained lambda (see --lambda-layers)."),
    lambda_layers: str = typer.Option("first", help="Which layers --lambda-scale scales: first or all."),
    lambda_sweep: Optional[str] = typer.Option(None, help="Robust accuracy vs lambda, e.g. 0.1:0.7:0.2."),
    square_queries: int = typer.Option(5000, help="Square attack queries (AutoAttack's standard: 5000)."),
    sanity: bool = typer.Option(True, "--sanity/--no-sanity", help="Run the sanity checks."),
    baseline: Optional[str] = typer.Option(None, help="An undefended model for the 'base model falls to 0' check."),
    save_examples: Optional[Path] = typer.Option(None, help="PNG grid of clean / adversarial / perturbation."),
    seed: int = typer.Option(0, help="Seed for the subset and the random starts."),
    device: str = typer.Option("auto", help="auto, cpu, cuda ..."),
    as_json: bool = typer.Option(False, "--json", help="Print the result (every hyperparameter, seed and version) as JSON."),
) -> None:
    """Adversarial robustness a reviewer would accept: FGSM, PGD, APGD, Square, AutoAttack, through
    every gradient mode that defeats masking in a CSC model, with sanity checks and intervals."""
    from .jobs.attack import AttackConfig, run_attack
    from .robust.attacks import parse_eps

    if not model.exists():
        raise ValueError(f"model file {model} does not exist")
    config = AttackConfig(model=str(model), dataset=dataset, data_dir=data_dir, eps=parse_eps(eps, norm),
                          norm=norm, n=n,
                          batch_size=batch_size, attacks=[a.strip() for a in attacks.split(",") if a.strip()],
                          steps=steps, alpha=alpha, restarts=restarts,
                          modes=[m.strip() for m in modes.split(",")] if modes else None, lam=lam,
                          lambda_scale=lambda_scale, lambda_layers=lambda_layers, lambda_sweep=_grid(lambda_sweep) if lambda_sweep else None,
                          square_queries=square_queries, sanity=sanity, baseline=baseline,
                          save_examples=str(save_examples) if save_examples else None, seed=seed, device=device)
    if as_json:
        console.print_json(json.dumps(run_attack(config).to_dict()))
        return
    with _progress() as bar:
        task = bar.add_task("attacking", total=None)

        def progress(kind: str, info: dict) -> None:
            if "total" in info:
                bar.update(task, description=f"{kind} {info.get('attack', '')} {info.get('mode', '')}",
                           completed=info["done"], total=info["total"])

        result = run_attack(config, progress).to_dict()
    _render_attack(result)


def _render_attack(result: dict) -> None:
    t = result["threat"]
    if result["banner"]:
        console.print(f"[bold yellow]{result['banner']}[/]")
    console.print(f"[bold]{result['model']}[/] on {result['dataset']}, {result['n']} examples, {t['norm']} eps "
                  f"{t['eps']:.5g} ({t['eps'] * 255:.2f}/255), lambda {t['lambda']['mode']}")
    table = Table(title="Robust accuracy (95% Wilson interval)")
    for col in ("attack", "gradient mode", "accuracy", "95% CI"):
        table.add_column(col, justify="right")
    c = result["clean"]
    table.add_row("none (clean)", "-", f"{100 * c['accuracy']:.1f}%", f"{100 * c['ci95'][0]:.1f}-{100 * c['ci95'][1]:.1f}")
    for r in result["results"]:
        table.add_row(r["attack"], r["mode"], f"{100 * r['accuracy']:.1f}%", f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}")
    rb = result["robust"]
    table.add_row("[bold]worst case[/]", "all", f"[bold]{100 * rb['accuracy']:.1f}%[/]",
                  f"{100 * rb['ci95'][0]:.1f}-{100 * rb['ci95'][1]:.1f}")
    console.print(table)
    warn = False
    if result["sanity"]:
        st = Table(title="Sanity checks")
        for col in ("check", "verdict", "examples (allowed)", "detail"):
            st.add_column(col)
        for chk in result["sanity"]:
            colour = {"PASS": "green", "WARN": "red", "N/A": "dim"}[chk["verdict"]]
            warn |= chk["verdict"] == "WARN"
            counted = "-" if chk.get("changed") is None else (
                f"{chk['changed']}" + (f" / {chk['n']}" if chk.get("n") else "") + f" ({chk['allowed']})")
            st.add_row(chk["check"], f"[{colour}]{chk['verdict']}[/]", counted, chk["detail"])
        console.print(st)
    headline = f"robust accuracy {100 * rb['accuracy']:.1f}% ({100 * rb['ci95'][0]:.1f}-{100 * rb['ci95'][1]:.1f})"
    if warn:
        headline += " -- [red]possibly overestimated: a sanity check warned[/]"
    console.print(headline)
    if result.get("sweep"):
        sw = Table(title="Robust accuracy vs test-time lambda (PGD, worst case over gradient modes)")
        for col in ("lambda", "clean", "robust"):
            sw.add_column(col, justify="right")
        for row in result["sweep"]:
            sw.add_row(f"{row['lambda']:g}", f"{100 * row['clean']['accuracy']:.1f}%", f"{100 * row['robust']['accuracy']:.1f}%")
        console.print(sw)
    if result.get("examples"):
        console.print(f"wrote {result['examples']}")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def _render_demo(result) -> None:
    cfg = result.config
    console.print(
        f"[bold]CSC layer demo[/] on {result.train_images} training / {result.test_images} held-out digits "
        f"({cfg['image_size']}x{cfg['image_size']}): {cfg['atoms']} atoms {cfg['kernel_size']}x{cfg['kernel_size']}, "
        f"lam={cfg['lam']:g}, K={cfg['steps']}"
    )
    console.print(
        "Lasso objective per epoch: " + ", ".join(f"{v:.3f}" for v in result.loss_per_epoch)
        + f"   step t={result.step_size:.4g} (L={result.lipschitz:.4g})"
    )
    table = Table(title=f"Held-out codes vs lambda (K={cfg['steps']})")
    for col in ("lambda", "non-zeros", "relative recon. error", "objective"):
        table.add_column(col, justify="right")
    for row in result.sparsity_vs_lam:
        table.add_row(f"{row['lam']:g}", f"{100 * row['nonzero']:.1f}%", f"{row['relative_error']:.3f}",
                      f"{row['objective']:.3f}")
    console.print(table)
    conv = Table(title=f"Distance to the converged code ({cfg['converged_steps']} steps): relative objective gap")
    for col in ("K", "FISTA", "ISTA"):
        conv.add_column(col, justify="right")
    for row in result.convergence:
        conv.add_row(str(row["steps"]), f"{row['fista']:.2e}", f"{row['ista']:.2e}")
    console.print(conv)
    verdict = "[green]holds[/]" if result.one_step_identity_error < 1e-5 else "[red]FAILS[/]"
    console.print(f"K = 1 is conv + fixed bias + ReLU: {verdict} (max difference {result.one_step_identity_error:.1e})")
    for path in result.images:
        console.print(f"wrote {path}")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: user errors become one line and exit code 1; ``--debug`` shows the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="csc", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place errors become messages
        if debug:
            raise
        err_console.print(f"[red]error:[/] {exc}  (run with --debug for the traceback)", highlight=False,
                          soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
