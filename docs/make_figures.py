"""Regenerate the docs' pictures (never edited by hand).

    python docs/make_figures.py                      # trains recipes/ctrl_digits.toml first (~9 min)
    python docs/make_figures.py --model runs/x/model.safetensors   # from a model file you have
    python docs/make_figures.py --robustness 'ResNet-20=runs/r20/model.safetensors' \
        'SDNet, --lambda auto=runs/sdnet/model.safetensors@auto' --data-dir data

The CSC-CTRL pictures: runs ``csc inspect`` on the model and keeps two of its figures, shrunk:
``docs/ctrl_digits_reconstructions.png`` (test images x over g(f(x))) and ``docs/ctrl_digits_zz.png``
(|Z^T Z| of the test features sorted by class). ``make docs-figures`` runs this.

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
KEEP = {"reconstructions.png": ("ctrl_digits_reconstructions.png", 640), "zz_heatmap.png": ("ctrl_digits_zz.png", 400)}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a CSC-CTRL model file (default: train recipes/ctrl_digits.toml)")
    parser.add_argument("--run-dir", default="runs/docs-ctrl-digits", help="where the training run goes")
    parser.add_argument("--robustness", nargs="+", metavar="LABEL=MODEL[@auto]",
                        help="draw docs/robustness.png from these classifiers instead")
    parser.add_argument("--data-dir", default="", help="where their dataset lives (csc eval --data-dir)")
    args = parser.parse_args()
    if args.robustness:
        robustness_figure(args.robustness, args.data_dir)
        return
    model = args.model
    if model is None:
        _csc("train", "digits", "--recipe", "recipes/ctrl_digits.toml", "--out", args.run_dir)
        model = str(Path(args.run_dir) / "model.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        _csc("inspect", model, "--out", tmp)
        for name, (target, width) in KEEP.items():
            _shrink(Path(tmp) / name, DOCS / target, width)
            print(f"wrote {DOCS / target}")


if __name__ == "__main__":
    main()
