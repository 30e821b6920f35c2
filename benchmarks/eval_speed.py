"""Evaluation throughput: SDNet-18 vs ResNet-18 (CIFAR layout), clean and one corruption pass, and
the cost of a per-input lambda rule (``--lambda auto``).

Images/s of `predict` on 32x32 images (eval mode, batch 256), and of one corruption pass
(generate gaussian_noise severity 5, then predict), interleaved in one run, medians. Then SDNet-18's
plain forward against its forward under each label-free rule of :mod:`csc_cli.robust.rules` (the
rule's statistic, and for ``discrepancy`` its bisection, on the stem's input), interleaved, medians:
the extra time per image of ``auto``. A rule's cost does not depend on its fitted coefficients.

    python benchmarks/eval_speed.py [--device cuda] [--images 512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from csc_cli.data.corruptions import corrupt
from csc_cli.jobs.common import predict
from csc_cli.models import build_model
from csc_cli.robust.rules import Level, fit_rules
from csc_cli.surgery import set_input_normalization

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def interleaved(jobs, repeats: int, device) -> dict:
    """Seconds of each job, ``repeats`` rounds, the jobs interleaved within a round."""
    times = {k: [] for k in jobs}
    for _ in range(repeats):
        for key, job in jobs.items():
            start = time.perf_counter()
            job()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = torch.rand(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    models = {name: set_input_normalization(build_model("resnet18_cifar", 10, csc=csc), MEAN, STD).to(device).eval()
              for name, csc in (("ResNet-18", "none"), ("SDNet-18", "stem"))}
    for m in models.values():
        predict(m, images[:8], device)  # warm-up (and the eval step-size estimate)
    jobs = {}
    for name, m in models.items():
        jobs[(name, "clean")] = lambda m=m: predict(m, images, device)
        jobs[(name, "gaussian_noise s5")] = lambda m=m: predict(m, corrupt(images, "gaussian_noise", 5), device)
    times = interleaved(jobs, args.repeats, device)
    rate = {k: args.images / statistics.median(v) for k, v in times.items()}
    sdnet = models["SDNet-18"]
    levels = [Level("clean", 0, 0.1, r=0.2, sigma=0.05, sigma2=0.0025, r_best=0.2),
              Level("gaussian_noise", 5, 0.6, r=0.6, sigma=0.5, sigma2=0.25, r_best=0.5)]
    rules = fit_rules("conv1", float(sdnet.conv1.lam), levels, lo=0.1, hi=1.4)
    noisy = corrupt(images, "gaussian_noise", 3)
    rule_jobs = {"plain": lambda: predict(sdnet, noisy, device)}
    for name, rule in rules.items():
        def job(rule=rule):
            with rule.applied(sdnet):
                return predict(sdnet, noisy, device)
        rule_jobs[name] = job
    rule_times = interleaved(rule_jobs, args.repeats, device)
    plain = statistics.median(rule_times["plain"])
    rule_rows = [{"rule": k, "ms_per_image": 1000 * statistics.median(v) / args.images,
                  "over_plain_time": statistics.median(v) / plain} for k, v in rule_times.items()]
    rows = [{"pass": p, "resnet_images_per_s": rate[("ResNet-18", p)], "sdnet_images_per_s": rate[("SDNet-18", p)],
             "sdnet_over_resnet_time": rate[("ResNet-18", p)] / rate[("SDNet-18", p)]}
            for p in ("clean", "gaussian_noise s5")]
    if args.json:
        print(json.dumps({"device": str(device), "images": args.images, "rows": rows, "rules": rule_rows}, indent=2))
        return
    table = Table(title=f"Eval throughput, 32x32, {device}, {args.threads} threads")
    for col in ("pass", "ResNet-18 img/s", "SDNet-18 img/s", "SDNet time / ResNet time"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["pass"], f"{r['resnet_images_per_s']:.0f}", f"{r['sdnet_images_per_s']:.0f}",
                      f"{r['sdnet_over_resnet_time']:.3f}")
    Console().print(table)
    table = Table(title=f"SDNet-18 under --lambda auto, gaussian_noise s3, {device}, {args.threads} threads")
    for col in ("rule", "ms / image", "time / plain forward"):
        table.add_column(col, justify="right")
    for r in rule_rows:
        table.add_row(r["rule"], f"{r['ms_per_image']:.2f}", f"{r['over_plain_time']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
