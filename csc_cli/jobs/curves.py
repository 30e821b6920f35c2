"""Training curves: what a run's ``metrics.jsonl`` says, as pictures -- one run, or several compared.

``run_curves(CurvesConfig(runs=[...]))`` reads each run's ``metrics.jsonl`` (a run folder, or the file
itself) and draws, one PNG per group, every series the runs have:

* ``loss`` -- training, held-out and test loss (a classifier) or the game's objective and its terms
  T, dR(Z), dR(Zh), the pairwise term and the pixel MSE of the training batches (an autoencoder);
* ``scores`` -- train / val / test accuracy (a classifier) or test / val PSNR (an autoencoder);
* ``lr`` -- the learning rate;
* ``csc`` -- per CSC layer, the share of non-zero codes, the relative reconstruction error of its
  input and its step size, on the run's probe images.

Several runs share each figure (one colour per run, named by its folder), so two warm-start variants
or CSC-CTRL and CTRL sit side by side. The result holds every plotted series, exactly the numbers of
the files, for ``--json`` and for checking.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from ..plots import curves_figure

__all__ = ["CurvesConfig", "CurvesResult", "run_curves", "read_metrics", "GROUPS", "is_run"]

#: The figures and the metrics.jsonl columns each may show (a run shows those it has).
GROUPS: Dict[str, List[str]] = {
    "loss": ["train_loss", "val_loss", "test_loss", "T", "dR_Z", "dR_Zh", "pairwise", "train_mse"],
    "scores": ["train_acc", "val_acc", "test_acc", "test_psnr", "val_psnr"],
    "lr": ["lr"],
}
LAYER_STATS = ("nonzero", "recon_error", "step_size")


def is_run(path: Path) -> bool:
    """A run folder (with a ``metrics.jsonl``) or a metrics file."""
    path = Path(path)
    return (path.is_dir() and (path / "metrics.jsonl").is_file()) or path.name.endswith(".jsonl")


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (``path`` is the run folder or the file)."""
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"{path} has no metrics.jsonl: give a run folder written by csc train, or its metrics file")
    rows = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{file}, line {number}: not a JSON object (is it a csc metrics.jsonl?)") from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise ValueError(f"{file}, line {number}: a metrics row needs an 'epoch' (is it a csc metrics.jsonl?)")
        rows.append(row)
    if not rows:
        raise ValueError(f"{file} is empty: the run has not finished an epoch yet")
    return rows


@dataclass
class CurvesConfig:
    runs: List[str]
    out: str = "inspect"


@dataclass
class CurvesResult:
    runs: List[str]
    #: figure -> panel -> run label -> {"epoch": [...], "value": [...]}: exactly what was plotted
    series: Dict[str, Dict[str, Dict[str, Dict[str, List[float]]]]]
    images: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _labels(paths: List[Path]) -> List[str]:
    """Short, distinct names: the run folders' names (the parent's for a metrics file)."""
    names = [(p if p.is_dir() else p.parent).resolve().name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]


def _points(rows: List[Dict[str, Any]], value) -> Dict[str, List[float]]:
    epochs, values = [], []
    for row in rows:
        v = value(row)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:  # skip None and NaN
            epochs.append(row["epoch"])
            values.append(float(v))
    return {"epoch": epochs, "value": values}


def run_curves(config: CurvesConfig) -> CurvesResult:
    """Read every run's metrics and draw the figures into ``config.out`` (see the module docstring)."""
    if not config.runs:
        raise ValueError("give at least one run folder (or metrics.jsonl) to draw")
    paths = [Path(r) for r in config.runs]
    labels = _labels(paths)
    tables = {label: read_metrics(p) for label, p in zip(labels, paths)}
    series: Dict[str, Dict[str, Dict[str, Dict[str, List[float]]]]] = {}
    for group, columns in GROUPS.items():
        panels: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
        for column in columns:
            per_run = {label: _points(rows, lambda row, c=column: row.get(c)) for label, rows in tables.items()}
            per_run = {label: pts for label, pts in per_run.items() if pts["epoch"]}
            if per_run:
                panels[column] = per_run
        if panels:
            series[group] = panels
    layers: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    for label, rows in tables.items():
        names = sorted({name for row in rows for name in row.get("csc_layers", {})})
        for name in names:
            for stat in LAYER_STATS:
                pts = _points(rows, lambda row, n=name, s=stat: row.get("csc_layers", {}).get(n, {}).get(s))
                if pts["epoch"]:
                    layers.setdefault(f"{name} {stat}", {})[label] = pts
    if layers:
        series["csc"] = layers
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    images = [curves_figure(panels, out / f"curves_{group}.png", title=_TITLES[group])
              for group, panels in series.items()]
    notes = [] if "csc" in series else ["no CSC layer statistics in these runs (plain ConvNets)"]
    return CurvesResult(runs=[str(p) for p in paths], series=series, images=images, notes=notes)


_TITLES = {"loss": "losses and the game's terms", "scores": "accuracy / PSNR", "lr": "learning rate",
           "csc": "CSC layers on the probe images: non-zero share, reconstruction error, step size"}
