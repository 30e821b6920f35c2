"""Regenerate the docs' pictures (never edited by hand).

    python docs/make_figures.py          # trains recipes/ctrl_digits.toml, CSC-CTRL and CTRL (~7 + 3 min)
    python docs/make_figures.py --model runs/x/model.safetensors --ctrl runs/y/model.safetensors
    python docs/make_figures.py --robustness 'ResNet-20=runs/r20/model.safetensors' \
        'SDNet, --lambda auto=runs/sdnet/model.safetensors@auto' --data-dir data

The CSC-CTRL pictures: runs ``csc inspect`` on the CSC-CTRL model and on the CTRL model of the same
recipe and seed (the same test images: inspect's sample is seeded), and keeps, shrunk:
``docs/ctrl_digits_reconstructions.png`` (test images x over g(f(x)), CSC-CTRL left, CTRL right),
``docs/ctrl_digits_class_samples.png`` (images decoded from each class's principal subspace, the
same two side by side) and ``docs/ctrl_digits_zz.png`` (|Z^T Z| of CSC-CTRL's test features sorted
by class). ``make docs-figures`` runs this.

The README's picture, ``docs/robustness.png`` (``--robustness LABEL=MODEL[@auto] ...``): ``csc eval
MODEL -c noise --json`` (``--lambda auto`` with ``@auto``) on each model's test split, and the
accuracy, clean and then the mean over the four noises at each severity, one line per model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# figure -> (README file, width in pixels: small enough for a README, large enough to read digits)
SIDE_BY_SIDE = {"reconstructions.png": ("ctrl_digits_reconstructions.png", 900),
                "class_samples.png": ("ctrl_digits_class_samples.png", 900)}
KEEP = {"zz_heatmap.png": ("ctrl_digits_zz.png", 400)}  # CSC-CTRL's alone
COLOURS = 64  # a palette PNG: a few tens of kB instead of hundreds


def _csc(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "csc_cli", *args], cwd=ROOT, check=True,
                          stdout=subprocess.PIPE, text=True).stdout


def noise_curve(model: str, auto: bool, data_dir: str = "") -> list:
    """Accuracy (%) clean and at severities 1-5, mean over the four noise corruptions."""
    args = ["eval", model, "-c", "noise", "--json", *(["--lambda", "auto"] if auto else []),
            *(["--data-dir", data_dir] if data_dir else [])]
    result = json.loads(_csc(*args))
    table = result["corruptions"]
    per = table["accuracy"]  # under --lambda auto: the rule's
    clean = result["clean"]["top1"]
    return [100 * clean] + [100 * sum(acc[str(s)] for acc in per.values()) / len(per) for s in range(1, 6)]


def robustness_figure(specs: list, data_dir: str, target: Path = DOCS / "robustness.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for spec in specs:
        label, _, model = spec.partition("=")
        path, _, mode = model.partition("@")
        ys = noise_curve(path, mode == "auto", data_dir)
        print(f"{label}: " + " / ".join(f"{y:.1f}" for y in ys))
        ax.plot(range(6), ys, marker="o", label=label)
    ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"])
    ax.set_xlabel("severity (CIFAR-10-C's noises: gaussian, shot, impulse, speckle)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("cifar10-mini: accuracy under noise", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    _shrink(target, target, 640)
    print(f"wrote {target}")


def _shrink(source: Path, target: Path, width: int) -> None:
    from PIL import Image

    image = Image.open(source).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.quantize(colors=COLOURS).save(target, optimize=True)


def _side_by_side(sources: list, labels: list, target: Path, width: int) -> None:
    """The figures in ``sources`` next to each other, each under its label, shrunk to ``width``."""
    from PIL import Image, ImageDraw

    images = [Image.open(s).convert("RGB") for s in sources]
    band = 28
    canvas = Image.new("RGB", (sum(i.width for i in images), band + max(i.height for i in images)), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for image, label in zip(images, labels):
        canvas.paste(image, (x, band))
        draw.text((x + image.width // 2, band // 2), label, fill="black", anchor="mm", font_size=20)
        x += image.width
    canvas.save(target)
    _shrink(target, target, width)


def _train(recipe_args: list, run_dir: str) -> str:
    _csc("train", "digits", "--recipe", "recipes/ctrl_digits.toml", *recipe_args, "--out", run_dir)
    return str(Path(run_dir) / "model.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a CSC-CTRL model file (default: train recipes/ctrl_digits.toml)")
    parser.add_argument("--ctrl", help="the CTRL model of the same recipe (default: train it with --csc none)")
    parser.add_argument("--run-dir", default="runs/docs-ctrl-digits", help="where the training runs go")
    parser.add_argument("--robustness", nargs="+", metavar="LABEL=MODEL[@auto]",
                        help="draw docs/robustness.png from these classifiers instead")
    parser.add_argument("--data-dir", default="", help="where their dataset lives (csc eval --data-dir)")
    args = parser.parse_args()
    if args.robustness:
        robustness_figure(args.robustness, args.data_dir)
        return
    model = args.model or _train([], str(Path(args.run_dir) / "csc-ctrl"))
    ctrl = args.ctrl or _train(["--csc", "none"], str(Path(args.run_dir) / "ctrl"))
    with tempfile.TemporaryDirectory() as tmp:
        mine, theirs = Path(tmp) / "csc-ctrl", Path(tmp) / "ctrl"
        _csc("inspect", model, "--out", str(mine))
        _csc("inspect", ctrl, "--out", str(theirs))
        for name, (target, width) in SIDE_BY_SIDE.items():
            _side_by_side([mine / name, theirs / name], ["CSC-CTRL", "CTRL"], DOCS / target, width)
            print(f"wrote {DOCS / target}")
        for name, (target, width) in KEEP.items():
            _shrink(mine / name, DOCS / target, width)
            print(f"wrote {DOCS / target}")


if __name__ == "__main__":
    main()
