"""One iteration of the CTRL game (encoder step(s) + decoder step): CSC-CTRL vs CTRL, measured in one run.

Both autoencoders (``ctrl_dcgan32`` or ``ctrl_resnet``, same size and batch) play ``GameStep`` on the same
random batch; the timings are interleaved (CTRL, CSC-CTRL, CTRL, ...) and the medians compared. The
ratio is the number to read (target <= 3 on a CPU: the unrolled solver's floor); absolute times on a
shared machine are noise.

    python benchmarks/ctrl_step.py --batch 128 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from csc_cli.autoencoders import build_autoencoder
from csc_cli.jobs.autoencoder.train import GameStep, _optimizer
from csc_cli.jobs.train_config import TrainConfig
from csc_cli.surgery import set_input_normalization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ctrl_dcgan32", choices=["ctrl_dcgan32", "ctrl_resnet"])
    parser.add_argument("--image-size", type=int, default=64, help="ctrl_resnet only (64 or 128)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--feature-dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--encoder-steps", type=int, default=1)
    parser.add_argument("--image", default="synthesis", choices=["synthesis", "code"],
                        help="CSC-CTRL's image stage (code: the layout before issue 30)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = 32 if args.arch == "ctrl_dcgan32" else args.image_size
    torch.manual_seed(0)
    x = torch.rand(args.batch, args.channels, size, size)
    y = torch.arange(args.batch) % args.classes
    games = {}
    for csc in ("none", "all"):
        model = build_autoencoder(args.arch, in_chans=args.channels, feature_dim=args.feature_dim, csc=csc,
                                  image_size=size if args.arch == "ctrl_resnet" else None,
                                  **({"image": args.image} if csc == "all" else {}))
        set_input_normalization(model, [0.5] * args.channels, [0.5] * args.channels)
        config = TrainConfig(arch=args.arch, csc=csc, feature_dim=args.feature_dim, encoder_steps=args.encoder_steps)
        games[csc] = GameStep(model, _optimizer(model, config), config, args.classes, torch.device("cpu"),
                              lr=lambda step: 1e-4)
        games[csc](x, y)  # warm-up: allocator, step-size estimates
    times = {"none": [], "all": []}
    for _ in range(args.repeats):
        for csc, game in games.items():
            start = time.perf_counter()
            game(x, y)
            times[csc].append(time.perf_counter() - start)
    ctrl, csc_ctrl = statistics.median(times["none"]), statistics.median(times["all"])
    result = {"arch": args.arch, "image": args.image, "batch": args.batch, "image_size": size, "feature_dim": args.feature_dim,
              "threads": torch.get_num_threads(), "ctrl_s": ctrl, "csc_ctrl_s": csc_ctrl, "ratio": csc_ctrl / ctrl}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.arch} (CSC-CTRL image: {args.image}) batch {args.batch} at {size} px, d = {args.feature_dim}, {torch.get_num_threads()} threads: "
          f"CTRL {ctrl:.3f} s, CSC-CTRL {csc_ctrl:.3f} s per iteration (medians of {args.repeats}): "
          f"ratio {csc_ctrl / ctrl:.2f} (target <= 3)")


if __name__ == "__main__":
    main()
