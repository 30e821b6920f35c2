"""PNG figures for eval results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List


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
        for key, label in (("oracle", "oracle (lambda chosen on test data)"), ("auto", "auto (calibrated rule)")):
            if key in table:
                modes.append((label, table[key]["accuracy"]))
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
        fig, ax = plt.subplots(figsize=(5, 4))
        for name in names:
            rs = [sweep["r"][name][s] for s in sweep["best_lam"][name]]
            lams = [sweep["best_lam"][name][s] for s in sweep["best_lam"][name]]
            ax.scatter(rs, lams, label=f"{name} (oracle, test)")
        cal = result.get("calibration")
        if cal:
            rs = [lv["r"] for lv in cal["levels"]]
            ax.scatter(rs, [lv["best_lam"] for lv in cal["levels"]], marker="x", label="calibration (train)")
            lo, hi = min(rs), max(rs)
            ax.plot([lo, hi], [cal["a"] * lo + cal["b"], cal["a"] * hi + cal["b"]], label="fitted rule")
        ax.set_xlabel("reconstruction error r(x) of the first CSC layer")
        ax.set_ylabel("best lambda")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "best_lambda_vs_error.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
    return written
