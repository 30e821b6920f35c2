"""Attack cost: seconds per 100 examples of PGD-10 and of the AutoAttack standard ensemble,
SDNet-18 vs ResNet-18 (CIFAR layout, 32x32), measured in one run.

AutoAttack's later stages only run on the examples that survive the earlier ones, so its cost
depends on the model's robustness, not only on its layers: measure trained models (``--models
RESNET.safetensors SDNET.safetensors``, e.g. from ``csc train``). Randomly initialised ones (the
default) are misleading here: a random SDNet-18's logits barely depend on its input, nothing flips,
and the whole ensemble runs on every example. Each attack runs once on --n test examples of the
models' dataset (random images without --models); the time is scaled to 100.

    python benchmarks/attack_speed.py --models r18.safetensors sdnet18.safetensors --data-dir D --n 20
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from rich.console import Console
from rich.table import Table

from csc_cli.models import build_model
from csc_cli.surgery import set_input_normalization
from csc_cli.robust.attacks import DefendedModel, library_attack, pgd

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--models", nargs=2, metavar=("RESNET", "SDNET"), help="trained model files")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    models = {}
    if args.models:
        import csc_cli
        from csc_cli.data import load_dataset

        for name, path in zip(("ResNet-18", "SDNet-18"), args.models):
            model = csc_cli.load(path).to(device)
            models[name] = DefendedModel(model)  # a loaded model normalises its own input
        test = load_dataset(model.csc_card.data.dataset, "test", args.data_dir)
        x = test.images[: args.n].to(device)
    else:
        x = torch.rand(args.n, 3, 32, 32, generator=gen).to(device)
        for name, csc in (("ResNet-18", "none"), ("SDNet-18", "stem")):
            torch.manual_seed(0)
            model = set_input_normalization(build_model("resnet18_cifar", 10, csc=csc), MEAN, STD)
            models[name] = DefendedModel(model.to(device).eval())
    for name, defended in models.items():
        with torch.no_grad():
            y = defended(x).argmax(1)  # attack the model's own predictions: every example starts correct
        start = time.perf_counter()
        pgd(defended, x, y, 8 / 255, alpha=2 / 255, steps=10)
        t_pgd = time.perf_counter() - start
        start = time.perf_counter()
        library_attack("autoattack", defended, 8 / 255, "Linf", 10, 0)(x, y)
        t_aa = time.perf_counter() - start
        rows.append({"model": name, "pgd10_s_per_100": 100 * t_pgd / args.n, "autoattack_s_per_100": 100 * t_aa / args.n})
    for r in rows:
        r["pgd10_ratio"] = r["pgd10_s_per_100"] / rows[0]["pgd10_s_per_100"]
        r["autoattack_ratio"] = r["autoattack_s_per_100"] / rows[0]["autoattack_s_per_100"]
    if args.json:
        print(json.dumps({"device": str(device), "n": args.n, "rows": rows}, indent=2))
        return
    table = Table(title=f"Attack cost per 100 examples ({device}, {args.threads} threads, measured on {args.n})")
    for col in ("model", "PGD-10 s/100", "ratio", "AutoAttack s/100", "ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], f"{r['pgd10_s_per_100']:.1f}", f"{r['pgd10_ratio']:.2f}",
                      f"{r['autoattack_s_per_100']:.1f}", f"{r['autoattack_ratio']:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
