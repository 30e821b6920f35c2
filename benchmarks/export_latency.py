"""Latency of the exported ONNX graph in onnxruntime against the same model in PyTorch eager, on the CPU.

For SDNet-18 (CSC stem), SDNet-18-All (every 3x3 conv CSC) and ResNet-18 (no CSC layer), all in the
CIFAR layout at 32x32 (``csc_cli.models.build_model('resnet18_cifar', 10, csc=...)``, random
weights: latency does not depend on them), batch 1 and 64, with the label-free lambda rule off (the
graph's lambda input not fed: the trained value) and on (``--lambda auto``: the rule picks each
image's lambda inside the graph; eager runs the same rule by its hooks, as ``csc eval --lambda
auto`` does). Each pair -- onnxruntime and eager on the same input -- is timed interleaved, several
repetitions, and reported as the ratio of the medians (onnxruntime / eager: below 1, onnxruntime is
faster): absolute times on shared machines are noise. Both run on ``--threads`` threads (torch's
intra-op pool and onnxruntime's ``intra_op_num_threads``).

    python benchmarks/export_latency.py                      # 1 thread, sigma rule, 7 repetitions
    python benchmarks/export_latency.py --threads 2 --rule residual --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from csc_cli.export import export_onnx
from csc_cli.models import build_model
from csc_cli.robust.rules import DiscrepancyRule, ResidualRule, SigmaRule, TableRule
from csc_cli.surgery import card_of, set_input_normalization

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
MODELS = (("SDNet-18", "stem"), ("SDNet-18-All", "all"), ("ResNet-18", "none"))
# a rule's cost does not depend on its coefficients: plausible ones
RULES = {
    "sigma": lambda lam: SigmaRule(layer="conv1", reference_lam=lam, lo=0.1, hi=1.4, a=5.0, b=0.1),
    "sigma_table": lambda lam: TableRule(layer="conv1", reference_lam=lam, lo=0.1, hi=1.4, knots=[0.0, 0.1, 0.3],
                                         lams=[0.1, 0.5, 1.4]),
    "residual": lambda lam: ResidualRule(layer="conv1", reference_lam=lam, lo=0.1, hi=1.4, a=3.0, b=0.1),
    "discrepancy": lambda lam: DiscrepancyRule(layer="conv1", reference_lam=lam, lo=0.1, hi=1.4, q=0.01, tau=0.8),
}


def session_for(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved(jobs: dict, repeats: int) -> dict:
    """Seconds of each job over ``repeats`` rounds, the jobs interleaved within a round (after one
    warm-up call each)."""
    for job in jobs.values():
        job()
    times = {k: [] for k in jobs}
    for _ in range(repeats):
        for key, job in jobs.items():
            start = time.perf_counter()
            job()
            times[key].append(time.perf_counter() - start)
    return times


def measure(model, csc: str, rule_name: str, batches, repeats: int, threads: int, folder: Path) -> list:
    rows = []
    modes = ["off", "on"] if csc != "none" else ["off"]
    for mode in modes:
        rule = None
        if mode == "on":
            rule = RULES[rule_name](float(model.conv1.lam))
            card_of(model).lambda_rule = rule.to_dict()
        path = folder / f"{csc}-{mode}.onnx"
        start = time.perf_counter()
        export_onnx(model, path, lam="auto" if rule else "input")
        export_s = time.perf_counter() - start
        session = session_for(path, threads)
        for batch in batches:
            x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
            feed = {"images": x.numpy()}

            def eager(x=x, rule=rule):
                with torch.inference_mode():
                    if rule is None:
                        return model(x)
                    with rule.applied(model):
                        return model(x)

            times = interleaved({"onnxruntime": lambda feed=feed: session.run(None, feed), "eager": eager}, repeats)
            ort_s, eager_s = statistics.median(times["onnxruntime"]), statistics.median(times["eager"])
            rows.append({"rule": rule_name if rule else "off", "batch": batch, "onnxruntime_ms": 1e3 * ort_s,
                         "eager_ms": 1e3 * eager_s, "ratio": ort_s / eager_s, "export_s": export_s,
                         "per_repetition_ratios": [a / b for a, b in zip(times["onnxruntime"], times["eager"])]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--rule", choices=sorted(RULES), default="sigma")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name, csc in MODELS:
            torch.manual_seed(0)
            model = set_input_normalization(build_model("resnet18_cifar", 10, csc=csc), MEAN, STD).eval()
            for row in measure(model, csc, args.rule, batches, args.repeats, args.threads, Path(folder)):
                results.append({"model": name, **row})
    if args.json:
        print(json.dumps({"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
                          "rows": results}, indent=2))
        return
    import onnxruntime

    table = Table(title=f"onnxruntime {onnxruntime.__version__} vs PyTorch {torch.__version__} eager, CPU, "
                        f"{args.threads} thread(s), 32x32, medians of {args.repeats} interleaved repetitions")
    for col in ("model", "lambda rule", "batch", "onnxruntime / eager", "onnxruntime ms", "eager ms"):
        table.add_column(col, justify="left" if col in ("model", "lambda rule") else "right")
    for r in results:
        table.add_row(r["model"], r["rule"], str(r["batch"]), f"{r['ratio']:.2f}", f"{r['onnxruntime_ms']:.1f}",
                      f"{r['eager_ms']:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
