"""Warm start: how much of a trained ConvNet a conversion keeps, and how fast fine-tuning recovers it.

A plain ResNet-20 is trained by ``csc train`` (or given with --source), then converted stem-only and
all-convs, with the SDNet settings (K = 2, non-negative, lambda 0.1) in conv units (csc convert's
default) and, for comparison, in code units (what csc convert did before); each is measured on the
whole test split right after the conversion, after ``--calibrate-bn`` (512 training images) and, in
conv units, after ``csc train --init`` fine-tuning with recipes/cifar10_warmstart.toml for --epochs.
The identity settings (K = 1, lambda 0, signed) are measured as a check: they must give the original.
Fine-tuning reports the test accuracy after every epoch; nothing is chosen on the test set.

    python benchmarks/warm_start.py --data-dir ../shared/data/cifar10-mini --train-epochs 15 --epochs 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import csc_cli
from csc_cli.convert import calibrate_batchnorm, convert
from csc_cli.data.source import open_split
from csc_cli.jobs.train import TrainConfig, run_train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 batches (e.g. ../shared/data/cifar10-mini)")
    parser.add_argument("--source", help="a trained plain ConvNet model file (default: train a ResNet-20 first)")
    parser.add_argument("--train-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    parser.add_argument("--calibrate", type=int, default=512)
    parser.add_argument("--out", default="runs/warm_start")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    source = args.source
    if source is None:
        base = TrainConfig.from_toml(ROOT / "recipes" / "cifar10_resnet18.toml", arch="resnet20_cifar", csc="none",
                                     epochs=args.train_epochs, data_dir=args.data_dir, out=str(out / "source"))
        source = run_train(base).model_path
    test = open_split("cifar10", "test", args.data_dir)
    train = open_split("cifar10", "train", args.data_dir)
    images, labels = test.take(torch.arange(len(test)))
    calib = train.take(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.calibrate])[0]

    @torch.no_grad()
    def accuracy(model) -> float:
        model.eval()
        right = sum(int((model(images[i:i + 256]).argmax(1) == labels[i:i + 256]).sum())
                    for i in range(0, len(images), 256))
        return right / len(images)

    original = accuracy(csc_cli.load(source))
    rows = []
    settings = {"identity (K=1, lam 0, signed)": dict(steps=1, lam=0.0, nonneg=False),
                "SDNet (K=2, lam 0.1, non-negative)": dict(steps=2, lam=0.1, nonneg=True)}
    for layers in ("stem", "all"):
        for name, options in settings.items():
            for units in ("conv", "code"):
                if units == "code" and options["steps"] == 1:
                    continue
                model, plan = convert(csc_cli.load(source), layers, units=units, input_size=(3, 32, 32), **options)
                row = {"layers": layers, "setting": name, "units": units, "replaced": len(plan.replaced),
                       "converted": accuracy(model)}
                calibrate_batchnorm(model, calib)
                row["calibrated"] = accuracy(model)
                if units == "conv" and options["steps"] == 2 and args.epochs:
                    path = csc_cli.save(model, out / f"{layers}.safetensors")
                    tune = TrainConfig.from_toml(ROOT / "recipes" / "cifar10_warmstart.toml", init=str(path),
                                                 epochs=args.epochs, data_dir=args.data_dir,
                                                 out=str(out / f"finetune_{layers}"))
                    history = run_train(tune).history
                    row["fine_tuned"] = [h["test_acc"] for h in history]
                rows.append(row)
    if args.json:
        print(json.dumps({"source": source, "original": original, "rows": rows}, indent=1))
        return
    table = Table(title=f"Warm start on {test.name}: the ConvNet {100 * original:.1f}% ({len(images)} test images)")
    for col in ("layers", "setting", "units", "converted", f"--calibrate-bn {args.calibrate}",
                f"fine-tuned (epoch 1..{args.epochs})"):
        table.add_column(col)
    for r in rows:
        tuned = " / ".join(f"{100 * a:.1f}" for a in r.get("fine_tuned", [])) or "-"
        table.add_row(f"{r['layers']} ({r['replaced']})", r["setting"], r["units"], f"{100 * r['converted']:.1f}",
                      f"{100 * r['calibrated']:.1f}", tuned)
    Console().print(table)


if __name__ == "__main__":
    main()
