"""What a reconstruction PSNR means on a dataset: the yardsticks every CTRL / CSC-CTRL number is read
against, on the test split ([0, 1] images, peak 1).

* a black image; the mean training image; the mean training image of the right class (knows the label);
* the autoencoder pair (``ctrl_dcgan32``, CTRL or CSC-CTRL) trained end to end on pixel MSE alone
  with Adam (no game) for ``--iterations`` iterations: what the architecture can do when it is asked
  only to reconstruct.

    python benchmarks/ctrl_yardsticks.py --dataset digits --width 16 --feature-dim 32 --iterations 300
    python benchmarks/ctrl_yardsticks.py --dataset cifar10 --data-dir ../shared/data/cifar10-mini

Prints a table and one JSON line (``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csc_cli.autoencoders import build_autoencoder  # noqa: E402
from csc_cli.data import load_dataset  # noqa: E402
from csc_cli.metrics import psnr, ssim  # noqa: E402
from csc_cli.surgery import set_input_normalization  # noqa: E402


def train_on_mse(model, images: torch.Tensor, iterations: int, batch: int, lr: float, seed: int) -> float:
    """``model`` (an autoencoder) trained on ``sum_pixels (g(f(x)) - x)^2`` alone: Adam betas (0.5,
    0.999), lr decayed linearly to 0 as in the game's recipes, seeded batches. Returns the seconds."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    for step in range(iterations):
        for group in optimizer.param_groups:
            group["lr"] = lr * (1 - step / iterations)
        x = images[torch.randint(0, images.shape[0], (batch,), generator=g)]
        loss = (model.reconstruct(x) - x).square().flatten(1).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return time.perf_counter() - started


def pair_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every pixel-MSE yardstick script shares."""
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--feature-dim", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")


def mse_trained(train, test, csc: str, width: int, feature_dim: int, iterations: int, batch: int, lr: float,
                seed: int) -> dict:
    torch.manual_seed(seed)
    c = train.images.shape[1]
    model = build_autoencoder("ctrl_dcgan32", in_chans=c, feature_dim=feature_dim, csc=csc, width=width)
    set_input_normalization(model, [0.5] * c, [0.5] * c)
    seconds = train_on_mse(model, train.images, iterations, batch, lr, seed)
    with torch.no_grad():
        recon = torch.cat([model.reconstruct(test.images[i:i + 256]).clamp(0, 1)
                           for i in range(0, test.images.shape[0], 256)])
    return {"psnr": psnr(recon, test.images), "ssim": ssim(recon, test.images), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    pair_arguments(parser)
    parser.add_argument("--csc", nargs="+", default=["none", "all"], choices=["none", "all"])
    args = parser.parse_args()
    root = Path(args.data_dir) if args.data_dir else None
    train = load_dataset(args.dataset, "train", root, image_size=32)
    test = load_dataset(args.dataset, "test", root, image_size=32)
    mean = train.images.mean(0, keepdim=True)
    class_means = torch.stack([train.images[train.labels == k].mean(0) for k in range(len(train.class_names))])
    rows = {
        "black image": {"psnr": psnr(torch.zeros_like(test.images), test.images)},
        "mean training image": {"psnr": psnr(mean.expand_as(test.images), test.images),
                                "ssim": ssim(mean.expand_as(test.images).contiguous(), test.images)},
        "mean image of the right class": {"psnr": psnr(class_means[test.labels], test.images),
                                          "ssim": ssim(class_means[test.labels], test.images)},
    }
    for csc in args.csc:
        name = f"{'CSC-CTRL' if csc == 'all' else 'CTRL'} pair on pixel MSE, {args.iterations} it"
        rows[name] = mse_trained(train, test, csc, args.width, args.feature_dim, args.iterations, args.batch,
                                 args.lr, args.seed)
    if args.json:
        print(json.dumps({"dataset": args.dataset, "width": args.width, "feature_dim": args.feature_dim,
                          "batch": args.batch, "lr": args.lr, "rows": rows}))
        return
    print(f"{args.dataset} test split ({test.images.shape[0]} images), width {args.width}, d {args.feature_dim}")
    for name, row in rows.items():
        extra = "".join(f"  {k} {v:.3f}" for k, v in row.items() if k != "psnr")
        print(f"  {name:<45} {row['psnr']:6.2f} dB{extra}")


if __name__ == "__main__":
    main()
