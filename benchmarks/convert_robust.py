"""Does conversion pay? A trained ConvNet, converted, fine-tuned and evaluated on noise (issue 29).

Every row starts from the same trained plain ConvNet (``--source``) and is fine-tuned for the same
epochs with the same recipe (``--recipe``, by default ``recipes/cifar10_convert_robust.toml``) and seed,
holding out ``--val-split`` of the training images:

* ``source``       -- the source as it is (no fine-tuning);
* ``plain``        -- the source fine-tuned without conversion (extra epochs are not robustness);
* ``noise``        -- the source fine-tuned with gaussian noise augmentation (``--noise SIGMA``):
                      what a user would pick instead to make a trained model robust;
* ``stem`` / ``all`` -- the stem (or every conv, ``--signed-residuals``) converted at the SDNet
                      settings (K = 2, lambda 0.1), then fine-tuned; ``--set KEY=VALUE`` adds recipe
                      overrides for these rows only (``--set lambda_jitter=0.1,0.6``);
* ``scratch``      -- a model file trained from scratch as an SDNet, given with ``--scratch``.

Each model is scored on the held-out training images (the choices are made there; the lambda rule
re-calibrated on 512 other training images) and on the test split (the rule the run stored, if any):
clean, and gaussian / shot / impulse / speckle noise at severities 1-5 (generated, seeded), as
trained and with ``--lambda auto``.

    python benchmarks/convert_robust.py --data-dir ../shared/data/cifar10-mini \\
        --source runs/r20/model.safetensors --rows source plain noise stem --epochs 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from rich.console import Console
from rich.table import Table

import csc_cli
from csc_cli.convert import convert
from csc_cli.data import load_dataset
from csc_cli.data.corruptions import NOISES, corrupt
from csc_cli.data.pipeline import split_holdout
from csc_cli.jobs.classifier.evaluate import AUTHORS_GRID, EvalConfig, calibrate_on_images
from csc_cli.jobs.common import accuracy
from csc_cli.jobs.train import TrainConfig, run_train
from csc_cli.layers import csc_layers
from csc_cli.robust.rules import rule_from_dict

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def scores(model, images: torch.Tensor, labels: torch.Tensor, seed: int) -> Dict[str, Any]:
    """Clean and per-noise, per-severity top-1 of ``model`` as it is."""
    out: Dict[str, Any] = {"clean": accuracy(model, (images, labels), CPU).acc}
    for name in NOISES:
        out[name] = [accuracy(model, (corrupt(images, name, s, seed=seed), labels), CPU).acc for s in range(1, 6)]
    return out


def summary(table: Dict[str, Any]) -> Dict[str, float]:
    """Means over severities, in points, and the mean of the three noises the rule is not fitted on."""
    means = {n: 100 * sum(v) / len(v) for n, v in table.items() if n != "clean"}
    return {"clean": 100 * table["clean"], **means, "unseen": sum(means[n] for n in NOISES[1:]) / 3}


def evaluate(path: str, val: tuple, calibration: tuple, test: tuple, seed: int) -> Dict[str, Any]:
    model = csc_cli.load(path).eval()
    result: Dict[str, Any] = {"model": path, "val": {"trained": scores(model, *val, seed)},
                              "test": {"trained": scores(model, *test, seed)}}
    if csc_layers(model):
        rule, report = calibrate_on_images(model, *calibration, EvalConfig(model=path), CPU, AUTHORS_GRID)
        with rule.applied(model):
            result["val"]["auto"] = scores(model, *val, seed)
        result["val_rule"] = rule.describe()
        stored = model.csc_card.lambda_rule
        if stored is not None:
            with rule_from_dict(stored).applied(model):
                result["test"]["auto"] = scores(model, *test, seed)
            result["test_rule"] = rule_from_dict(stored).describe()
    return result


def _overrides(items: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        key, value = item.split("=", 1)
        numbers = [float(v) for v in value.split(",")]
        out[key] = numbers if "," in value else numbers[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 batches (e.g. ../shared/data/cifar10-mini)")
    parser.add_argument("--source", required=True, help="a trained plain ConvNet model file")
    parser.add_argument("--scratch", help="an SDNet trained from scratch, for its row")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "cifar10_convert_robust.toml"))
    parser.add_argument("--rows", nargs="+", default=["source", "plain", "noise", "stem"],
                        choices=["source", "plain", "noise", "stem", "all", "scratch"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.1, help="the noise row's largest sigma")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides, converted rows")
    parser.add_argument("--tag", default="", help="added to the converted rows' run names")
    parser.add_argument("--val-split", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/convert_robust")
    parser.add_argument("--json", help="also write every number here")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset("cifar10", "train", Path(args.data_dir))
    test = load_dataset("cifar10", "test", Path(args.data_dir))
    fit_x, fit_y, val_x, val_y = split_holdout(train.images, train.labels, args.val_split, args.seed)
    pick = torch.randperm(fit_x.shape[0], generator=torch.Generator().manual_seed(args.seed + 1))[:512]
    calibration, val = (fit_x[pick], fit_y[pick]), (val_x, val_y)
    plain_recipe = {"lambda_jitter": [], "calibrate_lambda": False, "reconstruction": 0.0, "noise_augment": 0.0}

    def fine_tune(name: str, init: str, **overrides: Any) -> str:
        config = TrainConfig.from_toml(args.recipe, init=init, epochs=args.epochs, val_split=args.val_split,
                                       seed=args.seed, data_dir=args.data_dir, out=str(out / name), **overrides)
        return run_train(config).model_path

    def converted(layers: str) -> str:
        model, _ = convert(csc_cli.load(args.source), layers=layers, nonneg="auto" if layers == "all" else True,
                           input_size=(3, 32, 32))
        return str(csc_cli.save(model, out / f"converted_{layers}.safetensors"))

    paths: Dict[str, Optional[str]] = {}
    for row in args.rows:
        if row == "source":
            paths[row] = args.source
        elif row == "plain":
            paths[row] = fine_tune(f"plain{args.epochs}", args.source, **plain_recipe)
        elif row == "noise":
            paths[row] = fine_tune(f"noise{args.epochs}", args.source, **{**plain_recipe, "noise_augment": args.noise})
        elif row in ("stem", "all"):
            paths[row] = fine_tune(f"{row}{args.epochs}{args.tag}", converted(row), **_overrides(args.set))
        elif row == "scratch":
            paths[row] = args.scratch
    results = {row: evaluate(p, val, calibration, (test.images, test.labels), args.seed)
               for row, p in paths.items() if p}
    console = Console()
    for split in ("val", "test"):
        table = Table(title=f"{split}: top-1 %, mean over severities 1-5 (unseen: shot, impulse, speckle)")
        for col in ("row", "mode", "clean", "gaussian", "shot", "impulse", "speckle", "unseen"):
            table.add_column(col, justify="right" if col not in ("row", "mode") else "left")
        for row, r in results.items():
            for mode, t in r[split].items():
                s = summary(t)
                table.add_row(row, mode, *(f"{s[k]:.1f}" for k in ("clean", *NOISES, "unseen")))
        console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
