"""Why a stem denoises or not: its sparse codes, clean and noisy, against lambda (issue 29, item 1).

For each model file, on held-out *training* images (the ``--val-split`` part a run holds out, the
same seed), and for each lambda of ``--lambdas`` at the first CSC layer, clean and with gaussian
noise (CIFAR-10-C severities):

* ``rel``: the relative reconstruction error ``||x - D z|| / ||x||`` of the layer's input by its
  K-step code (what the K unrolled steps explain of the image);
* ``nz``: the share of non-zero code entries;
* ``change``: how far noise moves the code, ``||z(x + n) - z(x)|| / ||z(x)||`` at the same lambda
  (SDNet's "stable recovery": a larger lambda should make it smaller);
* ``stabler``: the share of images whose code moves less at this lambda than at the trained one;
* ``acc``: top-1 on the images;

and per model the dictionary's ``capacity`` (``rel`` after 200 steps at lambda 1e-3: what the atoms
can synthesise at all) and the atoms' DC share (the energy of each atom's per-channel mean: a
constant patch is what a smooth image region needs).

    python benchmarks/stem_diagnostics.py runs/sdnet/model.safetensors stem.safetensors \\
        --data-dir ../shared/data/cifar10-mini --json out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

import torch
from rich.console import Console
from rich.table import Table

import csc_cli
from csc_cli.data import load_dataset
from csc_cli.data.corruptions import corrupt
from csc_cli.data.pipeline import split_holdout
from csc_cli.jobs.common import predict
from csc_cli.robust.lam import first_csc_layer, lambda_override
from csc_cli.robust.rules import layer_input


def _relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a_i - b_i|| / ||b_i||`` per sample."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-12)


@torch.no_grad()
def diagnose(path: str, images: torch.Tensor, labels: torch.Tensor, lambdas: List[float],
             severities: List[int], seed: int) -> Dict[str, Any]:
    model = csc_cli.load(path).eval()
    name = first_csc_layer(model)
    layer = dict(model.named_modules())[name]
    trained = float(layer.lam)
    atoms = layer.atoms
    spatial = tuple(range(2, atoms.dim()))
    dc = atoms.mean(dim=spatial, keepdim=True).expand_as(atoms)
    dc_share = float((dc.square().flatten(1).sum(1) / atoms.square().flatten(1).sum(1)).mean())
    clean_in = layer_input(model, layer, images)
    capacity, _ = layer.solve(clean_in, lam=1e-3, steps=200)
    out: Dict[str, Any] = {"model": path, "layer": name, "trained_lam": trained, "atoms": list(atoms.shape),
                           "dc_share": dc_share,
                           "capacity": float(_relative(layer.decode(capacity, clean_in.shape[2:]), clean_in).mean()),
                           "levels": {}}
    clean_codes = {lam: layer.solve(clean_in, lam=lam)[0] for lam in set(lambdas) | {trained}}
    for severity in [0] + severities:
        x = images if severity == 0 else corrupt(images, "gaussian_noise", severity, seed=seed)
        inputs = clean_in if severity == 0 else layer_input(model, layer, x)
        level: Dict[str, Any] = {}
        change_trained = None
        if severity:
            z_trained = layer.solve(inputs, lam=trained)[0]
            change_trained = _relative(z_trained, clean_codes[trained])
        for lam in lambdas:
            z, _ = layer.solve(inputs, lam=lam)
            with lambda_override(model, {name: lam}):
                acc = float((predict(model, x, torch.device("cpu")).argmax(1) == labels).float().mean())
            row = {"rel": float(_relative(layer.decode(z, inputs.shape[2:]), inputs).mean()),
                   "nz": float((z != 0).float().mean()), "acc": acc}
            if severity:
                change = _relative(z, clean_codes[lam])
                row.update(change=float(change.mean()), stabler=float((change < change_trained).float().mean()))
            level[str(lam)] = row
        out["levels"]["clean" if severity == 0 else f"gaussian s{severity}"] = level
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="csc model files (a CSC stem, e.g. from csc convert or csc train)")
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 batches (e.g. ../shared/data/cifar10-mini)")
    parser.add_argument("--val-split", type=float, default=0.1, help="the held-out share (as the runs' --val-split)")
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed (it sets the held-out split)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.6])
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    train = load_dataset("cifar10", "train", Path(args.data_dir))
    _, _, images, labels = split_holdout(train.images, train.labels, args.val_split, args.seed)
    results = [diagnose(m, images, labels, args.lambdas, args.severities, args.seed) for m in args.models]
    console = Console()
    for r in results:
        table = Table(title=f"{r['model']}: {r['layer']} {r['atoms']}, DC share of the atoms {r['dc_share']:.2f}, "
                            f"capacity (rel. error at convergence) {r['capacity']:.3f}; {len(labels)} held-out images")
        table.add_column("level")
        table.add_column("lambda", justify="right")
        for col in ("rel. error", "non-zero", "code change", "stabler", "top-1"):
            table.add_column(col, justify="right")
        for level, rows in r["levels"].items():
            for lam, row in rows.items():
                table.add_row(level, lam, f"{row['rel']:.3f}", f"{row['nz']:.3f}",
                              f"{row['change']:.3f}" if "change" in row else "-",
                              f"{100 * row['stabler']:.0f}%" if "stabler" in row else "-", f"{100 * row['acc']:.1f}")
        console.print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
