"""Warm start: converting a trained ConvNet to SDNet settings, by the cliff or along the continuation path.

A plain ResNet-20 is trained by ``csc train`` (or given with --source). Then, for each of ``--layers``
(stem, all) and each variant, it is converted with the SDNet settings (K = 2, lambda 0.1, conv units)
and fine-tuned with ``recipes/cifar10_warmstart.toml`` for each of ``--epochs`` (separate runs: the
schedules depend on the run's length), on the same data and seed:

* ``cliff``  -- non-negative codes everywhere, no path, no distillation (before issue 25);
* ``signed-cliff`` -- signed codes where a conv feeds a residual sum (``--signed-residuals``) only;
* ``recipe`` -- ``--signed-residuals`` and the recipe as shipped (distillation from the source);
* ``path`` / ``path-nodistill`` -- ``--signed-residuals`` and the continuation path over half the run,
  with / without the recipe's distillation (``--set continuation=0.2`` changes its share).

``--set KEY=VALUE`` overrides a recipe number for every variant of the call.

Each row gives the test accuracy right after the conversion (for a path, at its start: the source),
then after every epoch (and, with --val-split, the held-out accuracy the settings were chosen on;
the run then trains on the rest). Nothing is chosen on the test set.

    python benchmarks/warm_start.py --data-dir ../shared/data/cifar10-mini --epochs 1 5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import csc_cli
from csc_cli.convert import convert
from csc_cli.data.source import open_split
from csc_cli.jobs.train import TrainConfig, run_train

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "cliff": dict(nonneg=True, continuation=0.0, distill=0.0),
    "signed-cliff": dict(nonneg="auto", continuation=0.0, distill=0.0),
    "recipe": dict(nonneg="auto", continuation=None, distill=None),  # None: the recipe's value
    "path-nodistill": dict(nonneg="auto", continuation=0.5, distill=0.0),
    "path": dict(nonneg="auto", continuation=0.5, distill=None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 batches (e.g. ../shared/data/cifar10-mini)")
    parser.add_argument("--source", help="a trained plain ConvNet model file (default: train a ResNet-20 first)")
    parser.add_argument("--train-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1], help="fine-tuning run lengths")
    parser.add_argument("--layers", nargs="+", default=["stem", "all"], choices=["stem", "all"])
    parser.add_argument("--variants", nargs="+", default=["cliff", "path"], choices=sorted(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides (numbers)")
    parser.add_argument("--val-split", type=float, default=0.0)
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
    images, labels = test.take(torch.arange(len(test)))

    @torch.no_grad()
    def accuracy(model) -> float:
        model.eval()
        right = sum(int((model(images[i:i + 256]).argmax(1) == labels[i:i + 256]).sum())
                    for i in range(0, len(images), 256))
        return right / len(images)

    original = accuracy(csc_cli.load(source))
    overrides = {k: float(v) for k, v in (item.split("=", 1) for item in args.set)}
    tag = "".join(f"-{k}{v:g}" for k, v in overrides.items())
    rows = []
    for layers in args.layers:
        for variant in args.variants:
            setting = VARIANTS[variant]
            model, plan = convert(csc_cli.load(source), layers, units="conv", input_size=(3, 32, 32), steps=2,
                                  lam=0.1, nonneg=setting["nonneg"])
            signed = sum(not layer.nonneg for layer in csc_cli.csc_layers(model).values())
            converted = accuracy(model)
            path = csc_cli.save(model, out / f"{layers}-{variant}.safetensors")
            for epochs in args.epochs:
                fields = {k: v for k, v in setting.items() if k != "nonneg" and v is not None}
                tune = TrainConfig.from_toml(ROOT / "recipes" / "cifar10_warmstart.toml", init=str(path),
                                             epochs=epochs, data_dir=args.data_dir, val_split=args.val_split,
                                             out=str(out / f"ft-{layers}-{variant}-{epochs}{tag}"),
                                             **{**fields, **overrides})
                result = run_train(tune)
                start = (result.history and csc_cli.load(result.model_path).csc_card.training.get("continuation")
                         or {}).get("start_test_acc")
                rows.append({"layers": layers, "replaced": len(plan.replaced), "signed": signed, "variant": variant,
                             "epochs": epochs, "continuation": tune.continuation, "distill": tune.distill,
                             "converted": converted, "path_start": start,
                             "test": [h["test_acc"] for h in result.history],
                             "val": [h.get("val_acc") for h in result.history], "seconds": result.seconds})
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        print(json.dumps({"source": source, "original": original, "rows": rows}, indent=1))
        return
    table = Table(title=f"Warm start on {test.name}: the ConvNet {100 * original:.1f}% ({len(images)} test images)")
    for col in ("layers", "variant", "run", "converted", "start", "test per epoch", "val per epoch"):
        table.add_column(col)
    for r in rows:
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
        table.add_row(f"{r['layers']} ({r['replaced']}, {r['signed']} signed)", r["variant"],
                      f"{r['epochs']} ep (path {r['continuation']:g}, distill {r['distill']:g})", pct(r["converted"]),
                      pct(r["path_start"]), " / ".join(pct(a) for a in r["test"]),
                      " / ".join(pct(a) for a in r["val"]))
    Console().print(table)


if __name__ == "__main__":
    main()
