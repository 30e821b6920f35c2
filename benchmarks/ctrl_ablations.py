"""Which part of CSC-CTRL costs the decibels: the ``ctrl_dcgan32`` pair trained end to end on pixel MSE
alone (no game), one architectural change at a time, scored on held-out training images (every choice
is read there) and on the test split (reported).

A variant is ``name=key:value,key:value`` or ``name=base+key:value,...`` (or one of the named ones in ``VARIANTS``):

* ``parts``: which half is made of CSC layers -- ``all`` (both), ``encoder``, ``decoder``, ``none`` (CTRL);
* ``last``: the decoder's last stage when the decoder is CSC -- ``sparse`` (a sparse deconvolution whose
  signed code *is* the image, before tanh: the layout up to issue 30), ``offset`` (the same with a
  learned per-channel offset before tanh), ``synthesis`` (the image is a synthesis x = D z_1 of the
  previous stage's code: a plain transposed conv);
* ``lam``, ``steps``, ``units``: every CSC layer's options; ``last_lam``: the last decoder stage's lambda;
  ``dec_lam``, ``dec_steps``, ``dec_units``: the decoder's inner stages' (0 / empty: as every layer);
  ``dec_signed:1``: signed codes in the decoder's inner stages;
* ``skip``: layers left as (transposed) convs, by short name, ``/``-separated (``deconv1/deconv2``);
* ``zero``: where the data's zero lies in the model's units -- ``pm1`` ([-1, 1]: a digit's background is
  -1, as CTRL scales inputs) or ``01`` ([0, 1]: the background is 0, so a sparse code at the image
  costs it nothing). The mechanism test of issue 30's first hypothesis.

    python benchmarks/ctrl_ablations.py --variants ctrl csc csc_enc csc_dec synthesis offset csc_01

Prints a table (held-out PSNR, test PSNR, background / digit PSNR on the held-out images, seconds) and
one JSON line per variant with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csc_cli.autoencoders import autoencoder_layout, build_autoencoder, csc_ctrl_edits  # noqa: E402
from csc_cli.data import load_dataset  # noqa: E402
from csc_cli.data.pipeline import split_holdout  # noqa: E402
from csc_cli.layers import CSCConvNd  # noqa: E402
from csc_cli.metrics import psnr  # noqa: E402
from csc_cli.surgery import edit_model, set_input_normalization  # noqa: E402
from ctrl_yardsticks import pair_arguments, train_on_mse  # noqa: E402  (beside this script)

DEFAULTS: Dict[str, Any] = {"parts": "all", "last": "sparse", "lam": 0.1, "steps": 2, "units": "auto",
                            "last_lam": None, "zero": "pm1", "dec_lam": None, "dec_steps": 0, "dec_units": "",
                            "dec_signed": 0, "skip": ""}
VARIANTS: Dict[str, Dict[str, Any]] = {
    "ctrl": {"parts": "none"},
    "csc": {},
    "csc_enc": {"parts": "encoder"},
    "csc_dec": {"parts": "decoder"},
    "synthesis": {"last": "synthesis"},
    "offset": {"last": "offset"},
    "csc_01": {"zero": "01"},
    "ctrl_01": {"parts": "none", "zero": "01"},
    "last_lam0": {"last_lam": 0.0},
    "last_lam001": {"last_lam": 0.01},
}


def parse_variant(text: str) -> tuple:
    if "=" not in text:
        if text not in VARIANTS:
            raise SystemExit(f"unknown variant {text!r}: one of {', '.join(VARIANTS)} or name=key:value,...")
        return text, {**DEFAULTS, **VARIANTS[text]}
    name, body = text.split("=", 1)
    spec = dict(DEFAULTS)
    if "+" in body:  # name=base+key:value,...
        base, body = body.split("+", 1)
        if base not in VARIANTS:
            raise SystemExit(f"unknown variant {base!r}: one of {', '.join(VARIANTS)}")
        spec.update(VARIANTS[base])
    for item in filter(None, body.split(",")):
        key, value = item.split(":", 1)
        if key not in DEFAULTS:
            raise SystemExit(f"unknown key {key!r}: one of {', '.join(DEFAULTS)}")
        spec[key] = type(DEFAULTS[key])(value) if DEFAULTS[key] is not None else float(value)
    if spec["last"] not in ("sparse", "offset", "synthesis") or spec["zero"] not in ("pm1", "01"):
        raise SystemExit(f"bad variant {text!r}")
    return name, spec


def build(spec: Dict[str, Any], in_chans: int, feature_dim: int, width: int) -> torch.nn.Module:
    """The CTRL pair, then the edits of ``build_autoencoder`` (``csc_ctrl_edits``) that ``spec``
    keeps, with the options it changes."""
    model = build_autoencoder("ctrl_dcgan32", in_chans=in_chans, feature_dim=feature_dim, csc="none", width=width)
    layout = autoencoder_layout(model)
    parts = {"all": ("encoder", "decoder"), "none": (), "encoder": ("encoder",), "decoder": ("decoder",)}[spec["parts"]]
    non_ends = [n for n in layout["convs"] if n not in layout["ends"]]
    conv_of = dict(zip(layout["activations"], non_ends))  # dcgan32: one activation per inner conv
    image_layer = layout["ends"][1]
    options: Dict[str, Any] = {"lam": spec["lam"], "steps": spec["steps"]}
    if spec["units"] != "auto":
        options["units"] = spec["units"]
    kept = []
    for edit in csc_ctrl_edits(model, "synthesis" if spec["last"] == "synthesis" else "code", **options):
        conv = conv_of.get(edit.target, edit.target)
        if conv.split(".")[0] not in parts or conv.split(".")[-1] in spec["skip"].split("/"):
            continue  # left a conv, and the activation after it kept
        if edit.op == "to_csc" and conv.startswith("decoder.") and conv != image_layer:
            if spec["dec_lam"] is not None:
                edit.options["lam"] = spec["dec_lam"]
            if spec["dec_steps"]:
                edit.options["steps"] = spec["dec_steps"]
            if spec["dec_units"]:
                edit.options["units"] = spec["dec_units"]
            if spec["dec_signed"]:
                edit.options["nonneg"] = False
        if edit.op == "to_csc" and conv == image_layer and spec["last_lam"] is not None:
            edit.options["lam"] = spec["last_lam"]
        kept.append(edit)
    for edit in kept:
        edit_model(model, edit)
    if spec["last"] == "offset" and isinstance(model.get_submodule(image_layer), CSCConvNd):
        # a learned offset per channel, added to the image's code before tanh
        model.get_submodule(image_layer).bias = torch.nn.Parameter(torch.zeros(in_chans))
    return model


def run(spec, train_x, val_x, test_x, feature_dim, width, iterations, batch, lr, seed) -> Dict[str, Any]:
    torch.manual_seed(seed)
    c = train_x.shape[1]
    model = build(spec, c, feature_dim, width)
    mean, std = (0.5, 0.5) if spec["zero"] == "pm1" else (0.0, 1.0)
    set_input_normalization(model, [mean] * c, [std] * c)
    seconds = train_on_mse(model, train_x, iterations, batch, lr, seed)

    def recon(images):
        with torch.no_grad():
            return torch.cat([model.reconstruct(images[i:i + 256]).clamp(0, 1) for i in range(0, len(images), 256)])

    val_r, test_r = recon(val_x), recon(test_x)
    background = val_x < 0.05  # a digit's background (38% of the pixels of the upsampled digits)
    mse_bg = float((val_r - val_x)[background].double().square().mean())
    mse_fg = float((val_r - val_x)[~background].double().square().mean())
    return {"val_psnr": psnr(val_r, val_x), "test_psnr": psnr(test_r, test_x),
            "val_background_psnr": -10 * torch.log10(torch.tensor(mse_bg)).item(),
            "val_foreground_psnr": -10 * torch.log10(torch.tensor(mse_fg)).item(),
            "background_share": float(background.double().mean()),
            "val_background_mean": float(val_r[background].mean()), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["ctrl", "csc"])
    pair_arguments(parser)
    parser.add_argument("--val-split", type=float, default=0.1)
    args = parser.parse_args()
    root = Path(args.data_dir) if args.data_dir else None
    train = load_dataset(args.dataset, "train", root, image_size=32)
    test = load_dataset(args.dataset, "test", root, image_size=32)
    train_x, _, val_x, _ = split_holdout(train.images, train.labels, args.val_split, args.seed)
    for text in args.variants:
        name, spec = parse_variant(text)
        row = run(spec, train_x, val_x, test.images, args.feature_dim, args.width, args.iterations, args.batch,
                  args.lr, args.seed)
        if args.json:
            print(json.dumps({"variant": name, "spec": spec, "dataset": args.dataset, "iterations": args.iterations,
                              "lr": args.lr, "seed": args.seed, **row}), flush=True)
        else:
            print(f"{name:<14} held-out {row['val_psnr']:6.2f} dB  test {row['test_psnr']:6.2f} dB  background "
                  f"{row['val_background_psnr']:6.2f} dB (mean {row['val_background_mean']:.3f})  digit "
                  f"{row['val_foreground_psnr']:6.2f} dB  {row['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
