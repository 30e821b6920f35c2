"""Regenerate the README's CSC-CTRL pictures from the digits recipe (never edited by hand).

    python docs/make_figures.py                      # trains recipes/ctrl_digits.toml first (~9 min)
    python docs/make_figures.py --model runs/x/model.safetensors   # from a model file you have

Runs ``csc inspect`` on the model and keeps two of its figures, shrunk to README size:
``docs/ctrl_digits_reconstructions.png`` (test images x over g(f(x))) and ``docs/ctrl_digits_zz.png``
(|Z^T Z| of the test features sorted by class). ``make docs-figures`` runs this script.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# figure -> (README file, width in pixels: small enough for a README, large enough to read digits)
KEEP = {"reconstructions.png": ("ctrl_digits_reconstructions.png", 640), "zz_heatmap.png": ("ctrl_digits_zz.png", 400)}
COLOURS = 64  # a palette PNG: a few tens of kB instead of hundreds


def _csc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "csc_cli", *args], cwd=ROOT, check=True)


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
    args = parser.parse_args()
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
