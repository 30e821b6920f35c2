"""Renderer of ``csc eval`` on an autoencoder (``AEEvalResult.to_dict()``). No computation, no files."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .app import console
from .render import calibration


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def ae_evaluate(result: dict) -> None:
    console.print(f"[bold]{result['model']}[/] on {result['dataset']} ({result['images']} test images"
                  + (", transfer)" if result["transfer"] else ")"))
    rec, rate = result["reconstruction"], result["rate"]
    t = Table(title="Reconstruction g(f(x)) vs x, and the test features")
    for col in ("MSE", "PSNR (dB)", "SSIM", "R", "Rc", "dR"):
        t.add_column(col, justify="right")
    t.add_row(f"{rec['mse']:.5f}", f"{rec['psnr']:.2f}", f"{rec['ssim']:.4f}", f"{rate['R']:.3f}",
              f"{rate['Rc']:.3f}", f"{rate['dR']:.3f}")
    console.print(t)
    ns = result.get("nearest_subspace")
    if ns:
        console.print(f"nearest subspace ({ns['components']} components per class, fitted on {ns['train_images']} "
                      f"training features): centred (PCA) {_pct(ns['centred'])}, uncentred (SVD) "
                      f"{_pct(ns['uncentred'])}")
    den = result.get("denoising")
    if den:
        d = Table(title=f"Denoising: g(f(x + noise)) vs x, sigma {den['noise']:g}, lambda on "
                        f"{len(den['layers'])} encoder CSC layers")
        for col in ("lambda", "PSNR (dB)", "SSIM"):
            d.add_column(col, justify="right")
        d.add_row("noisy input", f"{den['noisy_input_psnr']:.2f}", "-")
        trained = sorted(set(round(v, 6) for v in den["trained_lambdas"].values()))
        d.add_row("trained " + ",".join(f"{v:g}" for v in trained), f"{den['trained']['psnr']:.2f}",
                  f"{den['trained']['ssim']:.4f}")
        for row in den["rows"]:
            mark = " *" if row["lambda"] == den["best_lambda"] else ""
            d.add_row(f"{row['lambda']:g}{mark}", f"{row['psnr']:.2f}", f"{row['ssim']:.4f}")
        for name, row in den.get("auto", {}).items():
            d.add_row(f"auto: {name}" + (" (stored)" if row["stored"] else ""), f"{row['psnr']:.2f}",
                      f"{row['ssim']:.4f}")
        console.print(d)
        console.print("* best lambda of the grid (the oracle: chosen on these test images, not deployable)")
        for name, row in den.get("auto", {}).items():
            console.print(f"auto {name}: {row['formula']}; on the clean test images PSNR {row['clean_psnr']:.2f} dB "
                          f"(trained lambdas: {rec['psnr']:.2f} dB)")
    cal = result.get("calibration")
    if cal:
        calibration(cal, f"the encoder on {cal['images']} training images with noise sigma "
                         f"{', '.join(map(str, cal['noises']))}", "PSNR", lambda v: f"{v:.2f} dB")
    f = result.get("fid")
    if f:
        console.print(f"FID of the reconstructions vs the originals: {f['fid']:.3f} ({f['images']} images)")
    for note in result.get("notes", []):
        console.print(f"note: {note}")
    for path in result.get("files", []) or []:
        console.print(f"wrote {path}")


def ae_inspect(result: dict) -> None:
    """Renderer of ``csc inspect`` on an autoencoder (``AEInspectResult.to_dict()``)."""
    image = result.get("decoder_image")
    kind = "CTRL" if image is None else f"CSC-CTRL, image {'x = D_1 z_1' if image == 'synthesis' else 'the sparse code'}"
    console.print(f"[bold]{result['model']}[/]: {result['arch']} ({kind}, d {result['feature_dim']}) on "
                  f"{result['dataset']}, {result['test_features']} test / {result['train_features']} training features")
    rec, block = result["reconstruction"], result["block_diagonal"]
    t = Table(title="Numbers")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row(f"reconstruction MSE ({rec['images']} shown images)", f"{rec['mse']:.5f} ({rec['psnr']:.2f} dB)")
    t.add_row("block-diagonal energy of |Z^T Z|", f"{block['zz']:.3f} (chance {block['chance']:.3f})")
    t.add_row("block-diagonal energy of |Z^T f(g(Z))|", f"{block['zzh']:.3f}")
    t.add_row("mean <z, f(g(z))>", f"{result['self_consistency']:.3f}")
    console.print(t)
    s = Table(title="Top singular values of each class's test features")
    s.add_column("class")
    top = max((len(v) for v in result["singular_values"].values()), default=0)
    for i in range(min(top, 5)):
        s.add_column(f"s{i + 1}", justify="right")
    for name, values in result["singular_values"].items():
        s.add_row(name, *[f"{v:.3f}" for v in values[:5]])
    console.print(s)
    if result["files"]:
        folder = str(Path(result["files"][0]).parent)
        f = Table(title=f"Files in {folder}")
        f.add_column("file")
        for path in result["files"]:
            f.add_row(Path(path).name)
        console.print(f)
    for note in result.get("notes", []):
        console.print(f"note: {note}")
