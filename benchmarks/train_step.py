"""Training-step time and peak memory of SDNet-18 / SDNet-18-All vs ResNet-18 (CIFAR layout).

One SGD step (forward, backward, optimizer) on a batch of 64 32x32 images; times interleaved in
one run, medians; memory as the peak extra RSS of one step, each model in a fresh process
(``csc_cli.profiling``). Targets (issue 3): SDNet-18 / ResNet-18 time <= 1.05, SDNet-18-All /
ResNet-18 <= 3.2, SDNet-18 / ResNet-18 peak memory <= 1.05.

    python benchmarks/train_step.py [--device cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from csc_cli import profiling
from csc_cli.models import build_model

# (name, csc, CSC layer options)
MODELS = [
    ("ResNet-18", "none", {}),
    ("SDNet-18", "stem", {}),
    ("SDNet-18 (recompute)", "stem", {"backward": "recompute"}),
    ("SDNet-18-All", "all", {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = {}
    for name, csc, options in MODELS:
        torch.manual_seed(0)
        model = build_model("resnet18_cifar", 10, csc=csc, **options).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        x = torch.randn(args.batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)

        def step(model=model, opt=opt, x=x, y=y):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        step()
        steps[name] = step
    times = {name: [] for name, _, _ in MODELS}
    for _ in range(args.repeats):
        for name, _, _ in MODELS:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            steps[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    mem = {}
    for name, csc, options in MODELS:
        if device.type == "cuda":
            mem[name] = profiling.train_step_memory("resnet18_cifar", csc, batch=args.batch, device=args.device,
                                                    **options)["peak_bytes"]
        else:
            mem[name] = profiling.isolated("train_step_memory", arch="resnet18_cifar", csc=csc,
                                           batch=args.batch, **options)["peak_bytes"]
    rows = [{"model": name, "step_s": med[name], "time_ratio": med[name] / med["ResNet-18"],
             "peak_mib": mem[name] / 2**20, "memory_ratio": mem[name] / mem["ResNet-18"]} for name, _, _ in MODELS]
    if args.json:
        print(json.dumps({"device": str(device), "batch": args.batch, "repeats": args.repeats, "rows": rows}, indent=2))
        return
    table = Table(title=f"Training step, CIFAR ResNet-18 layout, batch {args.batch}, {device}, {args.threads} threads")
    for col in ("model", "step (median s)", "time / ResNet-18", "peak MiB", "memory / ResNet-18"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["model"], f"{r['step_s']:.3f}", f"{r['time_ratio']:.3f}", f"{r['peak_mib']:.0f}",
                      f"{r['memory_ratio']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
