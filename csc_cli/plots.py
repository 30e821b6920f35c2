"""Every PNG figure csc draws (matplotlib, headless): eval's curves and inspect's per-layer plots.

Figures with one entry per CSC layer are laid out for the number of layers: bar charts grow with
it and their labels shrink, line plots wrap into a grid of panels of a few layers each, so a model
with 50+ CSC layers stays readable. No torch here: the figures take plain numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def eval_figures(result: Dict[str, Any], out_dir: Path) -> List[str]:
    """Write the figures an eval result supports; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: List[str] = []
    table = result.get("corruptions")
    sweep = result.get("sweep")
    plt = _pyplot()
    if table:
        sev = [str(s) for s in table["severities"]]
        fig, ax = plt.subplots(figsize=(6, 4))
        modes = [("as trained" if result["lam"]["mode"] != "auto" else "auto", table["accuracy"])]
        if "oracle" in table:
            modes.append(("oracle (lambda chosen on test data)", table["oracle"]["accuracy"]))
        for name, auto in table.get("auto", {}).items():
            modes.append((f"auto: {name} rule", auto["accuracy"]))
        for label, acc in modes:
            ys = [sum(per[s] for per in acc.values()) / len(acc) for s in sev]
            ax.plot([int(s) for s in sev], [100 * y for y in ys], marker="o", label=label)
        ax.set_xlabel("severity")
        ax.set_ylabel(f"accuracy (%), mean over {len(table['accuracy'])} corruptions")
        ax.set_xticks([int(s) for s in sev])
        ax.legend()
        ax.set_title("Accuracy vs severity per lambda mode")
        fig.tight_layout()
        path = out_dir / "accuracy_vs_severity.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
    if sweep:
        names = list(sweep["accuracy"])
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
        for ax, name in zip(axes[0], names):
            for s, accs in sweep["accuracy"][name].items():
                ax.plot(sweep["grid"], [100 * a for a in accs], marker=".", label="clean" if s == "0" else f"severity {s}")
            ax.axvline(sweep["trained_lam"], color="grey", linestyle=":", label="trained lambda")
            ax.set_title(name)
            ax.set_xlabel(f"lambda of {sweep['layer']}")
            ax.set_ylabel("accuracy (%)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "accuracy_vs_lambda.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
        cal = result.get("calibration")
        for stat, xlabel in (("r", "reconstruction error r(x) of the first CSC layer"),
                             ("sigma", "noise level sigma(x) of the first CSC layer's input (MAD)")):
            if stat not in sweep:
                continue
            fig, ax = plt.subplots(figsize=(5, 4))
            for name in names:
                keys = list(sweep["best_lam"][name])
                ax.scatter([sweep[stat][name][k] for k in keys], [sweep["best_lam"][name][k] for k in keys],
                           label=f"{name} (oracle, test)")
            if cal:
                xs = [lv[stat] for lv in cal["levels"]]
                ax.scatter(xs, [lv["best_lam"] for lv in cal["levels"]], marker="x", color="k",
                           label="calibration (train)")
                rule = cal["rules"].get({"r": "residual", "sigma": "sigma"}[stat])
                if rule:
                    lo, hi = min(xs), max(xs)
                    ax.plot([lo, hi], [rule["a"] * lo + rule["b"], rule["a"] * hi + rule["b"]],
                            label=f"fitted {rule['rule']} rule")
                table = cal["rules"].get("sigma_table")
                if table and stat == "sigma":
                    ax.plot(table["knots"], table["lams"], linestyle="--", label="fitted sigma_table rule")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("best lambda")
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out_dir / ("best_lambda_vs_error.png" if stat == "r" else "best_lambda_vs_sigma.png")
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(str(path))
    return written


# ----------------------------------------------------------------------------- per-layer figures
LINES_PER_PANEL = 8  # layers drawn in one panel of a line plot
PANEL_COLUMNS = 3


def label_fontsize(count: int, base: float = 9.0, smallest: float = 4.0) -> float:
    """A font size for ``count`` labels along one axis: ``base`` up to 10, smaller beyond."""
    return max(smallest, base * min(1.0, math.sqrt(10 / max(count, 1))))


def panel_grid(count: int, per_panel: int = LINES_PER_PANEL, columns: int = PANEL_COLUMNS) -> Tuple[int, int, int]:
    """``(panels, rows, cols)`` for ``count`` series drawn ``per_panel`` to a panel, wrapped at
    ``columns`` panels a row."""
    panels = max(1, math.ceil(count / per_panel))
    cols = min(columns, panels)
    return panels, math.ceil(panels / cols), cols


def codes_figure(codes: Dict[str, Any], path: Path) -> Path:
    """Non-zero codes per layer (a bar each) and each layer's histogram of positive code values."""
    plt = _pyplot()
    names = list(codes["layers"])
    panels, rows, cols = panel_grid(len(names))
    width = max(10.0, 0.18 * len(names) + 2)
    fig = plt.figure(figsize=(width, 3.5 + 3.0 * rows))
    grid = fig.add_gridspec(1 + rows, cols, height_ratios=[3.5] + [3.0] * rows)
    bars = fig.add_subplot(grid[0, :])
    bars.bar(range(len(names)), [100 * codes["layers"][n]["nonzero"] for n in names])
    bars.set_xticks(range(len(names)), names, rotation=90 if len(names) > 12 else 60,
                    fontsize=label_fontsize(len(names)))
    bars.set_xlim(-0.6, len(names) - 0.4)
    bars.set_ylabel("non-zero codes (%)")
    for p in range(panels):
        ax = fig.add_subplot(grid[1 + p // cols, p % cols])
        chunk = names[p * LINES_PER_PANEL : (p + 1) * LINES_PER_PANEL]
        for n in chunk:
            h = codes["layers"][n]["histogram"]
            ax.plot(h["bin_edges_fraction_of_max"][1:], h["counts"], label=n)
        ax.set_yscale("log")
        ax.set_xlabel("positive code value / layer maximum", fontsize=8)
        ax.set_ylabel("count", fontsize=8)
        ax.legend(fontsize=6, ncol=1 if len(chunk) <= 4 else 2)
    return _save(fig, path, dpi=110)


def lines_figure(series: Dict[str, Tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, path: Path,
                 logx: bool = False, logy: bool = False, marks: Optional[Dict[str, int]] = None) -> Path:
    """One line per layer, ``LINES_PER_PANEL`` layers to a panel, panels wrapped into a grid;
    ``marks[name] = k`` puts a dot on point k (1-based) of that layer's line."""
    plt = _pyplot()
    names = list(series)
    panels, rows, cols = panel_grid(len(names))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False, sharey=True)
    for p, ax in enumerate(axes.flat):
        if p >= panels:
            ax.set_visible(False)
            continue
        for name in names[p * LINES_PER_PANEL : (p + 1) * LINES_PER_PANEL]:
            xs, ys = series[name]
            line = ax.plot(xs, ys, marker=".", label=name)[0]
            if marks and name in marks and marks[name] <= len(ys):
                ax.scatter([marks[name]], [ys[marks[name] - 1]], color=line.get_color(), s=40, zorder=3)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6)
    return _save(fig, path, dpi=110)


#: At most this many panels (quantities) to a row of a curves figure.
CURVE_COLUMNS = 3


def curves_figure(panels: Dict[str, Dict[str, Dict[str, Sequence[float]]]], path: Path, title: str = "") -> str:
    """Training curves: one panel per quantity (``panels[name][run] = {"epoch": [...], "value": [...]}``),
    one line per run, the same colour for a run in every panel; a grid of at most
    ``CURVE_COLUMNS`` panels a row. Returns the path written (as a string)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    names = list(panels)
    cols = min(CURVE_COLUMNS, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    runs = list(dict.fromkeys(run for per_run in panels.values() for run in per_run))
    colours = {run: f"C{i % 10}" for i, run in enumerate(runs)}
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.set_visible(False)
            continue
        for run, points in panels[names[i]].items():
            ax.plot(points["epoch"], points["value"], marker=".", color=colours[run], label=run)
        ax.set_title(names[i], fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(runs) > 1 or i == 0:
            ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return str(_save(fig, path, dpi=110))


def _save(fig, path: Path, dpi: int = 120) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path


# ----------------------------------------------------------------------------- autoencoder figures
def image_grid_figure(grid: Any, row_labels: Sequence[str], path: Path, title: str = "") -> Path:
    """One image grid (an ``(H, W, 3)`` array in [0, 1], rows of equal height) with a label per row."""
    plt = _pyplot()
    h, w = grid.shape[:2]
    inches = max(4.0, min(16.0, w / 60))
    fig, ax = plt.subplots(figsize=(inches + 1.5, max(2.0, inches * h / w) + 0.6))
    ax.imshow(grid, interpolation="nearest")
    rows = max(1, len(row_labels))
    ax.set_yticks([(i + 0.5) * h / rows for i in range(rows)], list(row_labels), fontsize=label_fontsize(rows))
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)
    return _save(fig, path, dpi=110)


def heatmap_figure(matrix: Any, path: Path, title: str, bounds: Sequence[int] = (), ticks: Sequence[float] = (),
                   tick_labels: Sequence[str] = ()) -> Path:
    """A square matrix with lines at the class ``bounds`` and class labels at ``ticks``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(matrix, cmap="viridis", interpolation="nearest", vmin=0)
    for b in bounds:
        ax.axhline(b - 0.5, color="white", linewidth=0.5)
        ax.axvline(b - 0.5, color="white", linewidth=0.5)
    if ticks:
        size = label_fontsize(len(ticks))
        ax.set_xticks(list(ticks), list(tick_labels), fontsize=size, rotation=90 if len(ticks) > 10 else 0)
        ax.set_yticks(list(ticks), list(tick_labels), fontsize=size)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    return _save(fig, path, dpi=110)


def spectra_figure(spectra: Dict[str, Sequence[float]], path: Path, title: str) -> Path:
    """One line of singular values per class (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, values in spectra.items():
        ax.plot(range(1, len(values) + 1), [max(v, 1e-12) for v in values], marker=".", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("index")
    ax.set_ylabel("singular value")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=1 if len(spectra) <= 10 else 2)
    return _save(fig, path, dpi=110)


def atom_panels_figure(panels: Dict[str, Any], path: Path, title: str, columns: int = 3) -> Path:
    """One panel per layer (an ``(H, W, 3)`` atom grid in [0, 1] each), ``columns`` panels a row."""
    plt = _pyplot()
    names = list(panels)
    cols = min(columns, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 1.8 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(names):
            ax.imshow(panels[names[i]], interpolation="nearest")
            ax.set_title(names[i], fontsize=8)
    fig.suptitle(title)
    return _save(fig, path, dpi=110)
