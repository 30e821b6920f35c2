"""The inspect job for autoencoders (CTRL / CSC-CTRL): what the encoder ``f`` and decoder ``g`` learned,
as PNG files and numbers.

``run_ae_inspect(AEInspectConfig(...), progress) -> AEInspectResult``, on the model's own dataset (the
test split, a seeded subset of ``features`` images; the training split, a seeded subset of
``train_images``, for the class subspaces). Files written into ``out``:

* ``reconstructions.png``: ``images`` test images ``x`` (top rows) over ``g(f(x))`` (bottom rows);
* ``class_samples.png``: one row per class, ``g`` of samples ``mean_k + sum_j a_j sigma_j v_j``
  (``a_j ~ N(0, 1)``, seeded) in the class's principal subspace of the *training* features (top
  ``components`` right singular vectors ``v_j`` of the centred class features; ``sigma_j`` their
  standard deviations, singular value / sqrt(n_k - 1)), renormalised onto the unit sphere;
* ``traversals.png``: for the first ``traversal_classes`` classes, ``g`` of ``mean_k + t v_j`` for the
  top 3 components ``j`` and ``t`` in ``[-traversal_range, traversal_range]``, renormalised;
* ``zz_heatmap.png``: ``|Z^T Z|`` of the test features sorted by class, and ``zzh_heatmap.png``:
  ``|Z^T Zh|`` with ``Zh = f(g(Z))``;
* ``spectra.png``: each class's singular values of its (uncentred) test features;
* ``atoms_encoder.png`` / ``atoms_decoder.png``: the atoms of every CSC layer (one per code channel,
  :meth:`~csc_cli.layers.CSCConvNd.atom_bank`) -- or, for CTRL, of every conv (a conv's filter per
  output channel; a transposed conv's pattern per input channel) -- one panel per layer, in colour /
  grey when the atoms have 3 / 1 channels, otherwise their first channel.

Numbers: per-class top singular values, the block-diagonal energy ratio of ``|Z^T Z|`` (the share of
its sum within classes: 1 when the classes lie in orthogonal subspaces) and of ``|Z^T Zh|``, the mean
``<z, f(g(z))>``, and the reconstruction MSE of the shown images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...autoencoders import check_trained, decoder_image
from ...checkpoint import load, read_card
from ...data.source import open_split
from ...layers import CSCConvNd
from .evaluate import _fit, _indices
from ..common import resolve_device
from .train import features_of
from ..events import ProgressFn, Step, ignore

__all__ = ["AEInspectConfig", "AEInspectResult", "run_ae_inspect", "block_energy_ratio", "class_subspaces",
           "sample_class", "traverse"]

STAGES = ("features", "reconstructions", "class samples", "traversals", "heatmaps", "spectra", "atoms")
TOP_SINGULAR = 10  # singular values per class in the result


@dataclass
class AEInspectConfig:
    model: str
    out: str = "inspect"
    data_dir: Optional[str] = None
    images: int = 16  # test images shown in reconstructions.png (1..16)
    features: int = 500  # test features for the heatmaps and the spectra (a seeded subset)
    train_images: Optional[int] = 5000  # training images for the class subspaces (None: the whole split)
    components: int = 10  # principal components per class for the samples
    samples: int = 8  # samples per class
    traversal_classes: int = 3
    traversal_steps: int = 7
    traversal_range: float = 0.5
    max_atoms: int = 64  # atoms shown per layer
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0


@dataclass
class AEInspectResult:
    model: str
    dataset: str
    arch: str
    feature_dim: int
    test_features: int
    train_features: int
    reconstruction: Dict[str, Any]
    singular_values: Dict[str, List[float]]
    block_diagonal: Dict[str, float]
    self_consistency: float
    atoms: Dict[str, Any]
    files: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    #: CSC-CTRL's image stage: 'synthesis' (x = D_1 z_1), 'code' (before issue 30) or None (CTRL)
    decoder_image: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- numbers
def _sorted_by_class(z: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
    order = torch.argsort(labels.cpu(), stable=True)
    return z[order], labels.cpu()[order]


def block_energy_ratio(z: Tensor, labels: Tensor, other: Optional[Tensor] = None) -> float:
    """``sum |<z_i, w_j>|`` over pairs of the same class / over all pairs (``w = other`` or ``z``):
    1 when the classes lie in mutually orthogonal subspaces, ~1/classes when they are mixed."""
    z = z.detach().double().cpu()
    w = z if other is None else other.detach().double().cpu()
    gram = (z @ w.T).abs()
    labels = labels.cpu()
    same = labels[:, None] == labels[None, :]
    total = float(gram.sum())
    return float(gram[same].sum()) / total if total > 0 else 0.0


def class_subspaces(z: Tensor, labels: Tensor, num_classes: int, components: int
                    ) -> List[Optional[Tuple[Tensor, Tensor, Tensor]]]:
    """Per class ``(mean (d,), basis (d, r), sigma (r,))``: the top ``r = min(components, n_k - 1, d)``
    principal directions of the class's centred features and their standard deviations (singular
    value / sqrt(n_k - 1)); ``None`` for a class with fewer than 2 features."""
    z = z.detach().double().cpu()
    labels = labels.cpu()
    out: List[Optional[Tuple[Tensor, Tensor, Tensor]]] = []
    for k in range(num_classes):
        zk = z[labels == k]
        if zk.shape[0] < 2:
            out.append(None)
            continue
        mean = zk.mean(0)
        _, s, vh = torch.linalg.svd(zk - mean, full_matrices=False)
        r = max(1, min(components, zk.shape[0] - 1, z.shape[1]))
        out.append((mean, vh[:r].T.contiguous(), s[:r] / math.sqrt(zk.shape[0] - 1)))
    return out


def _unit(v: Tensor) -> Tensor:
    return F.normalize(v, dim=-1, eps=1e-12)


def sample_class(mean: Tensor, basis: Tensor, sigma: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` unit vectors ``normalise(mean + sum_j a_j sigma_j v_j)``, ``a ~ N(0, I)`` from ``generator``."""
    a = torch.randn(n, basis.shape[1], generator=generator, dtype=torch.float64)
    return _unit(mean.double()[None] + (a * sigma.double()[None]) @ basis.double().T)


def traverse(mean: Tensor, basis: Tensor, ts: List[float], directions: int = 3) -> Tensor:
    """``(directions * len(ts), d)`` unit vectors ``normalise(mean + t v_j)``, row-major in ``j``."""
    rows = [mean.double()[None] + torch.tensor(ts, dtype=torch.float64)[:, None] * basis[:, j].double()[None]
            for j in range(min(directions, basis.shape[1]))]
    return _unit(torch.cat(rows))


# ----------------------------------------------------------------------------- pictures
def _unit_range(t: Tensor) -> Tensor:
    lo = t.flatten(1).amin(1).view(-1, *([1] * (t.dim() - 1)))
    hi = t.flatten(1).amax(1).view(-1, *([1] * (t.dim() - 1)))
    return (t - lo) / (hi - lo).clamp_min(1e-12)


def _grid(images: Tensor, nrow: int, scale: int = 1) -> np.ndarray:
    """``(N, C, H, W)`` images in [0, 1] as one ``(H', W', 3)`` array (rows of ``nrow``, white gaps)."""
    from torchvision.utils import make_grid

    images = images.detach().float().cpu().clamp(0, 1)
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def _decode(model: nn.Module, z: Tensor, device, batch_size: int) -> Tensor:
    was = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, z.shape[0], batch_size):
                out.append(model.decode(z[start:start + batch_size].float().to(device)).float().clamp(0, 1).cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def _atom_layers(model: nn.Module) -> Dict[str, Tuple[Tensor, bool]]:
    """``name -> (atoms (n, c, k, k), csc)`` for every 2-D CSC layer or, where there is none, conv."""
    layers: Dict[str, Tuple[Tensor, bool]] = {}
    skip: List[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if isinstance(m, CSCConvNd):
            skip.append(name)
            w = m.atom_bank().detach()
            if w.dim() == 4:
                layers[name] = (w, True)
        elif isinstance(m, nn.ConvTranspose2d):
            w = m.weight.detach()  # (in, out / groups, k, k): what one input channel paints
            layers[name] = (w, False)
        elif isinstance(m, nn.Conv2d):
            layers[name] = (m.weight.detach(), False)
    return layers


def _atom_picture(atoms: Tensor, max_atoms: int) -> Tuple[Tensor, str]:
    w = atoms.float()[:max_atoms]
    if w.shape[1] == 3:
        return _unit_range(w), "colour"
    if w.shape[1] == 1:
        return _unit_range(w), "grey"
    return _unit_range(w[:, :1]), "first channel"


# ----------------------------------------------------------------------------- the job
def _check(config: AEInspectConfig) -> None:
    if not 1 <= config.images <= 16:
        raise ValueError(f"images must be in 1..16, got {config.images}")
    if config.features < 2:
        raise ValueError(f"features must be >= 2, got {config.features}")
    if config.train_images is not None and config.train_images < 2:
        raise ValueError(f"train_images must be >= 2, got {config.train_images}")
    for name in ("components", "samples", "traversal_classes", "max_atoms"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.traversal_steps < 2 or not config.traversal_range > 0:
        raise ValueError("traversals need traversal_steps >= 2 and traversal_range > 0")


def run_ae_inspect(config: AEInspectConfig, progress: Optional[ProgressFn] = None) -> AEInspectResult:
    """Inspect an autoencoder model file (see the module docstring)."""
    from ... import plots

    emit = progress or ignore

    def stage(name: str, detail: str = "") -> None:
        emit(Step(name, STAGES.index(name) + 1, len(STAGES), detail))

    _check(config)
    card = read_card(config.model)
    if card.task != "autoencoder":
        raise ValueError(f"{config.model} is a {card.task}, not an autoencoder")
    dataset = card.data.dataset
    if not dataset:
        raise ValueError("the model file does not say which dataset it was trained on")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a directory")
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    model = load(config.model, map_location=device).to(device).eval()
    check_trained(model, config.model)
    channels, size = model.in_chans, model.image_size
    notes: List[str] = []
    files: List[str] = []

    # features: test (heatmaps, spectra, shown images) and training (class subspaces)
    test = open_split(dataset, "test", config.data_dir, image_size=size, resize=card.data.resize)
    idx = _indices(test, config.features, config.seed, notes, "test split")
    images, labels = test.take(idx)
    images = _fit(images, channels, size, test.name)
    z, recon = features_of(model, images, config.batch_size, device)
    num_classes = test.num_classes
    train = open_split(dataset, "train", config.data_dir, image_size=size, resize=card.data.resize)
    tidx = _indices(train, config.train_images, config.seed + 1, notes, "training split")
    x_train, y_train = train.take(tidx)
    z_train, _ = features_of(model, _fit(x_train, channels, size, train.name), config.batch_size, device)
    del x_train
    names = list(getattr(test, "class_names", []) or [str(k) for k in range(num_classes)])
    stage("features", f"{z.shape[0]} test, {z_train.shape[0]} training features")

    # 1. reconstructions
    shown = min(config.images, images.shape[0])
    x, xh = images[:shown], recon[:shown]
    mse = float((xh.double() - x.double()).square().mean())
    nrow = shown if shown <= 8 else math.ceil(shown / 2)
    scale = max(1, 64 // size)
    rows_x = math.ceil(shown / nrow)
    pad = lambda t: torch.cat([t, torch.ones(rows_x * nrow - t.shape[0], *t.shape[1:])])  # noqa: E731
    grid = _grid(torch.cat([pad(x), pad(xh)]), nrow, scale)
    path = out / "reconstructions.png"
    plots.image_grid_figure(grid, ["x"] * rows_x + ["g(f(x))"] * rows_x, path,
                            f"test images x (top) and reconstructions g(f(x)) (bottom), MSE {mse:.4g}")
    files.append(str(path))
    reconstruction = {"images": shown, "mse": mse,
                      "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else math.inf}
    stage("reconstructions")

    # 2. class samples from the training features' class subspaces
    spaces = class_subspaces(z_train, y_train, num_classes, config.components)
    gen = torch.Generator().manual_seed(config.seed + 11)
    sample_rows, sample_labels = [], []
    for k, space in enumerate(spaces):
        if space is None:
            notes.append(f"class {names[k]}: fewer than 2 training features, no samples")
            continue
        sample_rows.append(sample_class(*space, config.samples, gen))
        sample_labels.append(names[k])
    if sample_rows:
        decoded = _decode(model, torch.cat(sample_rows), device, config.batch_size)
        path = out / "class_samples.png"
        plots.image_grid_figure(_grid(decoded, config.samples, scale), sample_labels, path,
                                f"g(z), z = normalise(mean + sum_j a_j sigma_j v_j), top {config.components} "
                                "components of each class's training features")
        files.append(str(path))
    stage("class samples")

    # 3. traversals along the top 3 principal directions of a few classes
    ts = np.linspace(-config.traversal_range, config.traversal_range, config.traversal_steps).tolist()
    trav, trav_labels = [], []
    for k, space in enumerate(spaces):
        if space is None or len(trav_labels) >= 3 * config.traversal_classes:
            continue
        mean, basis, _ = space
        vectors = traverse(mean, basis, ts, 3)
        trav.append(vectors)
        trav_labels += [f"{names[k]}, v{j + 1}" for j in range(vectors.shape[0] // len(ts))]
        if len(trav) >= config.traversal_classes:
            break
    if trav:
        decoded = _decode(model, torch.cat(trav), device, config.batch_size)
        path = out / "traversals.png"
        plots.image_grid_figure(_grid(decoded, len(ts), scale), trav_labels, path,
                                "g(normalise(mean + t v_j)), t = " + ", ".join(f"{t:.2g}" for t in ts))
        files.append(str(path))
    stage("traversals")

    # 4. |Z^T Z| and |Z^T Zh|, Zh = f(g(Z)), sorted by class
    zs, ys = _sorted_by_class(z, labels)
    zh, _ = features_of(model, _decode(model, zs, device, config.batch_size), config.batch_size, device)
    present = sorted(set(int(v) for v in ys))
    bounds = [int((ys < k).sum()) for k in present[1:]]
    ticks = [(int((ys < k).sum()) + int((ys <= k).sum())) / 2 for k in present]
    for fname, other, title in (("zz_heatmap.png", zs, "|Z^T Z| of the test features, sorted by class"),
                                ("zzh_heatmap.png", zh, "|Z^T Zh|, Zh = f(g(Z)), sorted by class")):
        gram = (zs.double() @ other.double().T).abs().numpy()
        path = out / fname
        plots.heatmap_figure(gram, path, title, bounds=bounds, ticks=ticks, tick_labels=[names[k] for k in present])
        files.append(str(path))
    block = {"zz": block_energy_ratio(zs, ys), "zzh": block_energy_ratio(zs, ys, zh),
             "chance": float(sum(int((ys == k).sum()) ** 2 for k in present)) / float(ys.numel()) ** 2}
    consistency = float((zs.double() * zh.double()).sum(1).mean())
    stage("heatmaps")

    # 5. per-class singular values of the test features
    spectra: Dict[str, List[float]] = {}
    for k in present:
        s = torch.linalg.svdvals(z[labels == k].double())
        spectra[names[k]] = s.tolist()
    path = out / "spectra.png"
    plots.spectra_figure(spectra, path, f"singular values of each class's test features (d = {z.shape[1]})")
    files.append(str(path))
    stage("spectra")

    # 6. atoms, one figure per stage
    atoms: Dict[str, Any] = {}
    layers = _atom_layers(model)
    if not any(csc for _, csc in layers.values()):
        notes.append("no CSC layer (CTRL): showing conv filters (per output channel) and transposed-conv "
                     "patterns (per input channel), not dictionaries")
    for part in ("encoder", "decoder"):
        panels: Dict[str, np.ndarray] = {}
        for name, (w, csc) in layers.items():
            if not name.startswith(part + "."):
                continue
            picture, mode = _atom_picture(w, config.max_atoms)
            k = max(picture.shape[-2:])
            cols = min(16, picture.shape[0])
            panels[name] = _grid(picture, cols, max(1, 16 // k))
            atoms[name] = {"stage": part, "atoms": int(w.shape[0]), "shown": int(picture.shape[0]),
                           "channels": int(w.shape[1]), "kernel": list(w.shape[2:]), "shown_as": mode, "csc": csc}
        if panels:
            path = out / f"atoms_{part}.png"
            plots.atom_panels_figure(panels, path, f"{part} atoms")
            files.append(str(path))
            for name in panels:
                atoms[name]["file"] = str(path)
    stage("atoms")

    top = {k: v[:TOP_SINGULAR] for k, v in spectra.items()}
    return AEInspectResult(model=config.model, dataset=test.name, arch=card.arch, feature_dim=int(z.shape[1]),
                           test_features=int(z.shape[0]), train_features=int(z_train.shape[0]),
                           reconstruction=reconstruction, singular_values=top, block_diagonal=block,
                           self_consistency=consistency, atoms=atoms, files=files, notes=notes,
                           decoder_image=decoder_image(model))
