"""Search the CTRL game's settings for an autoencoder that reconstructs, on held-out *training* images.

Each run is a ``csc train`` of the CTRL game (``run_train``) with ``--val-split`` held out from the
training split; it is scored by the PSNR of ``g(f(x))`` on those held-out images (``val_psnr``), never
on the test split (the test PSNR is recorded beside it, for the report only). A run is given a budget
in game iterations (decoder steps); epochs follow from the batches per epoch.

    python benchmarks/ctrl_search.py --grid pure --iterations 200           # the pure game
    python benchmarks/ctrl_search.py --run name lr=1e-3 pixel_weight=1 ...  # one named run

Appends one JSON line per run to ``benchmarks/out/ctrl_search.jsonl`` (config, per-epoch val/test
PSNR, dR(Z), dR(Zh), seconds) and prints a table sorted by the final held-out PSNR.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csc_cli.jobs.train import run_train  # noqa: E402
from csc_cli.jobs.train_config import TrainConfig, read_recipe  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
BASE = dict(dataset="digits", image_size=32, arch="ctrl_dcgan32", csc="all", lam=0.1, steps=2, ctrl_mode="multi",
            feature_dim=32, width=16, encoder_steps=1, first_step_dr=False, eps2=0.5, batch_size=512, lr=1e-3,
            weight_decay=0.0, schedule="linear", min_lr=0.0, augment="none", val_split=0.1, seed=0)

# The pure game's space, one axis at a time from BASE (lr, schedule, encoder steps, width, d, batch,
# multi vs binary, betas); every entry has pixel_weight = feature_weight = 0.
PURE = {
    "base": {},
    "lr1.5e-4": {"lr": 1.5e-4},
    "lr3e-3": {"lr": 3e-3},
    "constant": {"schedule": "constant"},
    "enc2_dr": {"encoder_steps": 2, "first_step_dr": True},
    "width32": {"width": 32},
    "d64": {"feature_dim": 64},
    "batch256": {"batch_size": 256},
    "binary": {"ctrl_mode": "binary"},
    "betas0_0.9": {"encoder_beta1": 0.0, "encoder_beta2": 0.9, "decoder_beta1": 0.0, "decoder_beta2": 0.9},
}
CONSISTENCY = {
    "pixel0.3": {"pixel_weight": 0.3},
    "pixel1": {"pixel_weight": 1.0},
    "pixel3": {"pixel_weight": 3.0},
    "feature10": {"feature_weight": 10.0},
    "feature10+pixel1": {"feature_weight": 10.0, "pixel_weight": 1.0},
}


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def run_one(name: str, settings: dict, iterations: int, tag: str) -> dict:
    config = TrainConfig(**{**BASE, **settings, "out": str(OUT / "runs" / f"{tag}-{name}")})
    probe = config.resolved()
    from csc_cli.jobs.train import make_data

    steps_per_epoch = len(make_data(probe).train)
    config.epochs = max(1, math.ceil(iterations / steps_per_epoch))
    started = time.perf_counter()
    result = run_train(config)
    seconds = time.perf_counter() - started
    curve = [{k: row.get(k) for k in ("epoch", "val_psnr", "test_psnr", "dR_Z", "dR_Zh", "pairwise", "pixel",
                                       "feature", "test_dR")} for row in result.history]
    record = {"tag": tag, "name": name, "settings": {**BASE, **settings}, "iterations": config.epochs * steps_per_epoch,
              "seconds": seconds, "final_val_psnr": curve[-1]["val_psnr"], "best_val_psnr": max(c["val_psnr"] for c in curve),
              "final_test_psnr": curve[-1]["test_psnr"], "curve": curve}
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "ctrl_search.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(f"{tag:>10} {name:<20} it {record['iterations']:>5} {seconds:7.1f}s val {record['final_val_psnr']:6.2f} "
          f"(best {record['best_val_psnr']:6.2f}) test {record['final_test_psnr']:6.2f} "
          f"dR(Zh) {curve[-1]['dR_Zh']}", flush=True)
    return record


def summarize(folders) -> None:
    """A markdown table of finished or stopped runs, from their ``metrics.jsonl`` (2 iterations per
    epoch at batch 512 on digits; the iterations column counts what the run actually did)."""
    print("| run | iterations | held-out PSNR last (best) | train-mode PSNR | dR(Z) | dR(Zh) | pairwise |")
    print("|---|---|---|---|---|---|---|")
    for folder in folders:
        rows = [json.loads(line) for line in open(Path(folder) / "metrics.jsonl")]
        config = json.loads((Path(folder) / "config.json").read_text())
        per_epoch = 1438 * (1 - config.get("val_split", 0)) // config["batch_size"]
        last = rows[-1]
        pixels = config.get("image_size", 32) ** 2  # digits are gray: the pixel term sums this many
        train_mode = 10 * math.log10(pixels / last["pixel"])
        num = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731 - binary mode has no dR(Zh), pairwise
        print(f"| {Path(folder).name} | {int(len(rows) * per_epoch)} | {last['val_psnr']:.2f} "
              f"({max(r['val_psnr'] for r in rows):.2f}) | {train_mode:.2f} | {num(last['dR_Z'])} | "
              f"{num(last['dR_Zh'])} | {num(last['pairwise'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=["pure", "consistency"], help="run a predefined grid")
    parser.add_argument("--only", nargs="*", help="names from the grid to run")
    parser.add_argument("--run", nargs="+", metavar=("NAME", "KEY=VALUE"), help="one run with these settings")
    parser.add_argument("--base", nargs="*", default=[], metavar="KEY=VALUE", help="change BASE for this call")
    parser.add_argument("--recipe", help="take BASE from a recipe")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--tag", default="search")
    parser.add_argument("--summarize", nargs="+", metavar="RUN_DIR", help="print a table of these runs and stop")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    if args.recipe:
        BASE.update(read_recipe(Path(args.recipe)))
        BASE.setdefault("val_split", 0.1)
    BASE.update({k: _value(v) for k, v in (item.split("=", 1) for item in args.base)})
    if args.run:
        name, *pairs = args.run
        run_one(name, {k: _value(v) for k, v in (p.split("=", 1) for p in pairs)}, args.iterations, args.tag)
        return
    grid = PURE if args.grid == "pure" else CONSISTENCY
    for name, settings in grid.items():
        if args.only and name not in args.only:
            continue
        run_one(name, settings, args.iterations, args.tag)


if __name__ == "__main__":
    main()
