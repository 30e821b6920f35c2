"""The ``csc`` command line: parse arguments, call a job, render its result. Nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__

app = typer.Typer(
    name="csc",
    help="Convolutional sparse coding for real vision models (SDNet, CSC-CTRL).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """Convolutional sparse coding for real vision models (SDNet, CSC-CTRL)."""


@app.command()
def version() -> None:
    """Print the versions of csc and of the libraries it runs on."""
    import torch

    table = Table(show_header=False, box=None)
    table.add_row("csc", __version__)
    table.add_row("torch", torch.__version__)
    table.add_row("cuda available", str(torch.cuda.is_available()))
    console.print(table)


def _floats(text: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@app.command()
def demo(
    lam: float = typer.Option(0.1, "--lambda", "--lam", help="Sparsity weight of the CSC layer."),
    steps: int = typer.Option(2, help="Unrolled FISTA steps (K) in the layer."),
    atoms: int = typer.Option(16, help="Number of dictionary atoms (output channels)."),
    kernel_size: int = typer.Option(5, help="Atom size in pixels."),
    epochs: int = typer.Option(3, help="Passes over the training digits when learning the atoms."),
    max_images: Optional[int] = typer.Option(None, help="Use only this many digits (quick runs)."),
    lam_grid: str = typer.Option("0.02,0.05,0.1,0.2,0.4", help="Lambdas for the sparsity table."),
    seed: int = typer.Option(0, help="Random seed."),
    out: Optional[Path] = typer.Option(None, help="Write atoms.png and reconstructions.png here."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Learn a convolutional dictionary on the built-in digits and show what a CSC layer does:
    sparsity and reconstruction vs lambda, distance of K steps to the converged code, and the
    K = 1 identity (conv + fixed bias + ReLU). Runs offline in under a minute on 2 cores."""
    from .jobs.demo import DemoConfig, run_demo

    config = DemoConfig(lam=lam, steps=steps, atoms=atoms, kernel_size=kernel_size, epochs=epochs,
                        max_images=max_images, lam_grid=_floats(lam_grid), seed=seed, out=out)
    if as_json:
        result = run_demo(config)
        console.print_json(json.dumps(result.to_dict()))
        return
    with _progress() as bar:
        task = bar.add_task("learning atoms", total=None)
        result = run_demo(config, lambda stage, done, total: bar.update(task, description=stage,
                                                                           completed=done, total=total))
    _render_demo(result)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True)


def _render_demo(result) -> None:
    cfg = result.config
    console.print(
        f"[bold]CSC layer demo[/] on {result.train_images} training / {result.test_images} held-out digits "
        f"({cfg['image_size']}x{cfg['image_size']}): {cfg['atoms']} atoms {cfg['kernel_size']}x{cfg['kernel_size']}, "
        f"lam={cfg['lam']:g}, K={cfg['steps']}"
    )
    console.print(
        "Lasso objective per epoch: " + ", ".join(f"{v:.3f}" for v in result.loss_per_epoch)
        + f"   step t={result.step_size:.4g} (L={result.lipschitz:.4g})"
    )
    table = Table(title=f"Held-out codes vs lambda (K={cfg['steps']})")
    for col in ("lambda", "non-zeros", "relative recon. error", "objective"):
        table.add_column(col, justify="right")
    for row in result.sparsity_vs_lam:
        table.add_row(f"{row['lam']:g}", f"{100 * row['nonzero']:.1f}%", f"{row['relative_error']:.3f}",
                      f"{row['objective']:.3f}")
    console.print(table)
    conv = Table(title=f"Distance to the converged code ({cfg['converged_steps']} steps): relative objective gap")
    for col in ("K", "FISTA", "ISTA"):
        conv.add_column(col, justify="right")
    for row in result.convergence:
        conv.add_row(str(row["steps"]), f"{row['fista']:.2e}", f"{row['ista']:.2e}")
    console.print(conv)
    verdict = "[green]holds[/]" if result.one_step_identity_error < 1e-5 else "[red]FAILS[/]"
    console.print(f"K = 1 is conv + fixed bias + ReLU: {verdict} (max difference {result.one_step_identity_error:.1e})")
    for path in result.images:
        console.print(f"wrote {path}")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: user errors become one line and exit code 1; ``--debug`` shows the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="csc", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place errors become messages
        if debug:
            raise
        err_console.print(f"[red]error:[/] {exc}  (run with --debug for the traceback)", highlight=False,
                          soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
