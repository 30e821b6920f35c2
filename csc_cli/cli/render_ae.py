"""Renderer of ``csc eval`` on an autoencoder (``AEEvalResult.to_dict()``). No computation, no files."""

from __future__ import annotations

from rich.table import Table

from .app import console


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
        console.print(d)
        console.print("* best lambda of the grid (chosen on the test data)")
    f = result.get("fid")
    if f:
        console.print(f"FID of the reconstructions vs the originals: {f['fid']:.3f} ({f['images']} images)")
    for note in result.get("notes", []):
        console.print(f"note: {note}")
    for path in result.get("files", []) or []:
        console.print(f"wrote {path}")
