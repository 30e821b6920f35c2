"""Forward+backward time of CSCConv2d(steps=2) divided by nn.Conv2d on the same shape, and of
CSCConvTranspose2d(steps=2) divided by nn.ConvTranspose2d (kernel 4, stride 2: x2 up-sampling).

Ratios, measured in one run with the two layers interleaved, medians of several repetitions:
absolute times on shared machines are noise. Also the cost of the training-time step-size refresh
as a fraction of a training step (target < 2%).

On a CPU the numbers depend on glibc's allocator: by default a freed 16 MB tensor goes back to the
OS and the next one page-faults in again, which can cost more than a small convolution itself
(nn.Conv2d 3->64 forward+backward: ~20 ms with faults, ~5 ms without, here). ``--allocator both``
(the default) reports the two regimes, each in a fresh process: ``default`` (what a plain process
gets) and ``steady`` (mmap/trim thresholds raised: tensors are reused from the heap, as in a
long-running training loop once sizes repeat), so neither hides the other.

    python benchmarks/layer_speed.py                 # CPU, 2 threads, float32, both allocators
    python benchmarks/layer_speed.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
from rich.console import Console
from rich.table import Table

from csc_cli import CSCConv2d, CSCConvTranspose2d

# (in, out, size, batch, target ratio, the authors' code as measured on the project's CPU machine)
SHAPES = [
    (3, 64, 32, 64, 5.0, 7.8),
    (64, 64, 32, 32, 3.3, 4.1),
    (128, 128, 16, 32, 3.1, 3.3),
]

# transposed (in, out, input size -> output size, batch, target ratio): sparse deconvolution, x2 up-sampling
TRANSPOSED_SHAPES = [
    (64, 32, 16, 32, 3.3),
    (256, 128, 8, 32, 3.3),
]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fwd_bwd(layer, x, grad):
    def run():
        layer.zero_grad(set_to_none=True)
        if x.grad is not None:
            x.grad = None
        layer(x).backward(grad)

    return run


def _interleaved_medians(fns, repeats, device):
    times = [[] for _ in fns]
    for fn in fns:  # warm-up: allocator, kernels, step-size estimate
        fn()
        fn()
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], times


def bench_shape(cin, cout, size, batch, device, dtype, repeats, channels_last=False):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False).to(device, dtype, memory_format=fmt).train()
    csc = CSCConv2d(cin, cout, 3, padding=1, steps=2).to(device, dtype, memory_format=fmt).train()
    # an image into a stem needs no input gradient; a hidden feature map does
    x = torch.randn(batch, cin, size, size, device=device, dtype=dtype).to(memory_format=fmt)
    x.requires_grad_(cin > 3)
    grad = torch.randn(batch, cout, size, size, device=device, dtype=dtype).to(memory_format=fmt)
    (t_conv, t_csc), raw = _interleaved_medians([_fwd_bwd(conv, x, grad), _fwd_bwd(csc, x, grad)], repeats, device)
    per_rep = statistics.median(b / a for a, b in zip(*raw))
    return t_conv, t_csc, per_rep


def bench_transposed_shape(cin, cout, size, batch, device, dtype, repeats, channels_last=False):
    """nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1) vs CSCConvTranspose2d(steps=2), size -> 2 size."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False).to(device, dtype, memory_format=fmt)
    csc = CSCConvTranspose2d(cin, cout, 4, stride=2, padding=1, steps=2).to(device, dtype, memory_format=fmt)
    x = torch.randn(batch, cin, size, size, device=device, dtype=dtype).to(memory_format=fmt).requires_grad_(True)
    grad = torch.randn(batch, cout, 2 * size, 2 * size, device=device, dtype=dtype).to(memory_format=fmt)
    (t_conv, t_csc), raw = _interleaved_medians([_fwd_bwd(conv.train(), x, grad), _fwd_bwd(csc.train(), x, grad)],
                                                repeats, device)
    per_rep = statistics.median(b / a for a, b in zip(*raw))
    return t_conv, t_csc, per_rep


def refresh_cost(device, dtype, repeats, batch=128, cin=3, cout=64, size=32):
    """Time of one training-mode step-size refresh (after a small weight update, as in training)
    relative to a CSC training step (forward+backward) at the paper's CIFAR batch size."""
    torch.manual_seed(0)
    layer = CSCConv2d(cin, cout, 3, padding=1, steps=2).to(device, dtype).train()
    x = torch.randn(batch, cin, size, size, device=device, dtype=dtype)
    grad = torch.randn(batch, cout, size, size, device=device, dtype=dtype)
    fwd_bwd = _fwd_bwd(layer, x, grad)
    noise = 1e-3 * layer.weight.detach().abs().mean() * torch.randn_like(layer.weight)

    def step():  # a training step, ending with a small update (an optimizer step's worth)
        fwd_bwd()
        with torch.no_grad():
            layer.weight.add_(noise)

    def refresh():  # what every training forward adds: the warm-started step-size refresh
        layer._lipschitz_for((size, size), layer.atoms, refresh=True)

    (t_step, t_refresh), _ = _interleaved_medians([step, refresh], repeats, device)
    return t_refresh / t_step


STEADY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--allocator", default="both", choices=["both", "default", "steady"],
                        help="CPU allocator regime(s) to measure, each in a fresh process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.allocator == "both" and torch.device(args.device).type == "cpu":
        for regime in ("default", "steady"):
            argv = [a for a in sys.argv[1:] if not a.startswith("--allocator")] + ["--allocator", regime]
            env = {**os.environ, **(STEADY_ENV if regime == "steady" else {})}
            subprocess.run([sys.executable, __file__, *argv], env=env, check=True)
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    rows = []
    for cin, cout, size, batch, target, authors in SHAPES:
        t_conv, t_csc, per_rep = bench_shape(cin, cout, size, batch, device, dtype, args.repeats, args.channels_last)
        rows.append({"shape": f"{cin}->{cout} @{size}x{size} batch {batch}", "conv_ms": 1e3 * t_conv,
                     "csc_ms": 1e3 * t_csc, "ratio": t_csc / t_conv, "ratio_median_per_rep": per_rep,
                     "target": target, "authors_cpu": authors})
    for cin, cout, size, batch, target in TRANSPOSED_SHAPES:
        t_conv, t_csc, per_rep = bench_transposed_shape(cin, cout, size, batch, device, dtype, args.repeats,
                                                        args.channels_last)
        rows.append({"shape": f"transposed {cin}->{cout} @{size}->{2 * size} batch {batch}", "conv_ms": 1e3 * t_conv,
                     "csc_ms": 1e3 * t_csc, "ratio": t_csc / t_conv, "ratio_median_per_rep": per_rep,
                     "target": target, "authors_cpu": None})
    refresh = refresh_cost(device, dtype, args.repeats)
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "threads": args.threads, "dtype": args.dtype, "torch": torch.__version__,
            "channels_last": args.channels_last, "repeats": args.repeats,
            "allocator": args.allocator if device.type == "cpu" else "cuda"}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows, "refresh_fraction_of_step": refresh}, indent=2))
        return
    table = Table(title=f"CSC layer (steps=2) / the nn layer it replaces, forward+backward ({meta['device']}, "
                        f"{args.threads} threads, {args.dtype}, allocator: {meta['allocator']})")
    for col in ("shape", "nn ms", "csc ms", "ratio", "median per-rep ratio", "target", "authors (CPU)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["shape"], f"{r['conv_ms']:.2f}", f"{r['csc_ms']:.2f}", f"{r['ratio']:.2f}",
                      f"{r['ratio_median_per_rep']:.2f}", "-" if r["target"] is None else f"<= {r['target']}",
                      "-" if r["authors_cpu"] is None else f"{r['authors_cpu']}")
    console = Console()
    console.print(table)
    console.print(f"step-size refresh / training step (3->64 @32x32, batch 128): {100 * refresh:.2f}% (target < 2%)")


if __name__ == "__main__":
    main()
