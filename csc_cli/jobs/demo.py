"""The layer demo: learn a convolutional dictionary on real digits and show what a CSC layer does.

End to end on the built-in data (no download, ~half a minute on 2 cores):

1. learn the atoms of a ``CSCConv2d`` by minimising the Lasso objective: codes from ``learn_steps``
   FISTA steps, then a gradient step on the atoms at those fixed codes (by the envelope theorem,
   the gradient of the minimised objective); the training-mode step-size refresh runs every batch;
2. on held-out digits, measure sparsity and reconstruction error as ``lam`` varies;
3. measure how far the layer's K steps are from the converged sparse code (FISTA vs ISTA);
4. check the paper's identity: with K = 1 the layer is conv + fixed negative bias + ReLU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F

from ..core import lasso_terms
from ..data import load_digits
from ..layers import CSCConv2d
from .events import ProgressFn, Step


@dataclass
class DemoConfig:
    lam: float = 0.1
    steps: int = 2
    atoms: int = 16
    kernel_size: int = 5
    image_size: int = 16
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.01
    learn_steps: int = 30
    seed: int = 0
    max_images: Optional[int] = None  # use only this many digits (quick runs)
    lam_grid: List[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.4])
    step_grid: List[int] = field(default_factory=lambda: [1, 2, 5, 20, 100])
    converged_steps: int = 1000
    out: Optional[Path] = None  # write PNGs here


@dataclass
class DemoResult:
    config: dict
    train_images: int
    test_images: int
    loss_per_epoch: List[float]
    step_size: float
    lipschitz: float
    sparsity_vs_lam: List[dict]  # lam, nonzero fraction, relative reconstruction error, objective
    convergence: List[dict]  # steps, relative objective gap of FISTA and ISTA to the converged code
    one_step_identity_error: float  # max |layer(x) - relu(conv(x, tD) - lam t)| with K = 1
    images: List[str]  # PNG files written

    def to_dict(self) -> dict:
        return asdict(self)


def run_demo(config: DemoConfig, progress: Optional[ProgressFn] = None) -> DemoResult:
    """Run the demo; ``progress(Step("learning atoms", done, total))`` is called as training advances."""
    torch.manual_seed(config.seed)
    images, _ = load_digits(config.image_size)
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(images.shape[0], generator=gen)
    if config.max_images:
        order = order[: config.max_images]
    images = images[order]  # in [0, 1], background 0: strokes are what needs coding
    n_test = max(1, images.shape[0] // 5)
    test, train = images[:n_test], images[n_test:]

    layer = CSCConv2d(1, config.atoms, config.kernel_size, padding=config.kernel_size // 2,
                      lam=config.lam, steps=config.steps)
    optimizer = torch.optim.Adam(layer.parameters(), lr=config.lr)
    batches = (train.shape[0] + config.batch_size - 1) // config.batch_size
    losses: List[float] = []
    layer.train()
    for epoch in range(config.epochs):
        perm = torch.randperm(train.shape[0], generator=gen)
        total = torch.zeros(())
        for b in range(batches):
            x = train[perm[b * config.batch_size : (b + 1) * config.batch_size]]
            with torch.no_grad():
                z, _ = layer.solve(x, steps=config.learn_steps)
            loss = lasso_terms(x, z, layer.geometry, layer.atoms, layer.lam).objective.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * x.shape[0]
            if progress:
                progress(Step("learning atoms", epoch * batches + b + 1, config.epochs * batches))
        losses.append(float(total) / train.shape[0])
    layer.refresh_step_size((config.image_size, config.image_size))
    layer.eval()

    with torch.no_grad():
        energy = test.square().flatten(1).sum(1)
        sparsity = []
        for lam in config.lam_grid:
            z, _ = layer.solve(test, lam=lam)
            terms = lasso_terms(test, z, layer.geometry, layer.atoms, lam)
            sparsity.append({
                "lam": lam,
                "nonzero": float((z != 0).float().mean()),
                "relative_error": float((2 * terms.data / energy).sqrt().mean()),
                "objective": float(terms.objective.mean()),
            })
        best, _ = layer.solve(test, steps=config.converged_steps)
        optimum = lasso_terms(test, best, layer.geometry, layer.atoms, layer.lam).objective
        convergence = []
        for k in config.step_grid:
            row = {"steps": k}
            for method in ("fista", "ista"):
                z, _ = layer.solve(test, steps=k, method=method)
                obj = lasso_terms(test, z, layer.geometry, layer.atoms, layer.lam).objective
                row[method] = float(((obj - optimum) / optimum).mean())
            convergence.append(row)
        t = layer.step_size
        z1, _ = layer.solve(test, steps=1)
        by_hand = F.relu(F.conv2d(test, t * layer.atoms, padding=config.kernel_size // 2) - layer.lam * t)
        identity_error = float((z1 - by_hand).abs().max())

    written: List[str] = []
    if config.out is not None:
        written = _write_pictures(layer, test, Path(config.out))
    return DemoResult(
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        train_images=train.shape[0],
        test_images=test.shape[0],
        loss_per_epoch=losses,
        step_size=float(layer.step_size),
        lipschitz=float(layer.lipschitz),
        sparsity_vs_lam=sparsity,
        convergence=convergence,
        one_step_identity_error=identity_error,
        images=written,
    )


def _write_pictures(layer: CSCConv2d, test: torch.Tensor, out: Path) -> List[str]:
    from torchvision.utils import save_image

    out.mkdir(parents=True, exist_ok=True)
    atoms = layer.atoms.detach()
    lo = atoms.flatten(1).amin(1).view(-1, 1, 1, 1)
    hi = atoms.flatten(1).amax(1).view(-1, 1, 1, 1)
    atoms_path = out / "atoms.png"
    save_image(F.interpolate((atoms - lo) / (hi - lo).clamp_min(1e-12), scale_factor=4, mode="nearest"),
               atoms_path, nrow=8, padding=2, pad_value=1.0)
    with torch.no_grad():
        x = test[:16]
        recon = layer.decode(layer.solve(x)[0], x.shape[2:])
    pair = torch.cat([x, recon])
    recon_path = out / "reconstructions.png"
    save_image(F.interpolate(pair.clamp(0, 1), scale_factor=4, mode="nearest"), recon_path, nrow=16, padding=2)
    return [str(atoms_path), str(recon_path)]
