"""Image and feature metrics for autoencoders: PSNR, SSIM, nearest subspace, FID. Pure tensor math.

* :func:`psnr` -- ``10 log10(peak^2 / MSE)`` (dB) of the mean squared error over the whole batch;
* :func:`ssim` -- Wang, Bovik, Sheikh & Simoncelli (2004): an 11x11 Gaussian window (sigma 1.5),
  ``K1 = 0.01``, ``K2 = 0.03``, data range 1, the SSIM map over the *valid* window positions
  (their reference code's ``filter2(..., 'valid')``; images must be at least 11x11), averaged over
  positions, channels and images; local (co)variances are the window-weighted ones, not
  sample-corrected;
* :func:`fit_subspaces` / :func:`nearest_subspace` -- the CTRL authors' nearest-subspace classifier:
  per class a ``components``-dim principal subspace of the training features (centred: the class
  mean removed, PCA; uncentred: SVD of the raw features); a feature goes to the class whose subspace
  leaves the smallest residual ``||(I - U U^T)(z - mean)||``;
* :func:`fid_features` / :func:`frechet_distance` / :func:`fid` -- the Frechet distance between
  Gaussians fitted to the features of two image sets: ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``
  in float64, ``Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2))`` from symmetric eigen-
  decompositions. :func:`inception_net` builds the standard feature network (torchvision's
  Inception-v3, 2048-d pool features) from a weights file; :func:`inception_inputs` prepares [0, 1]
  images for it (grey replicated to RGB, 299x299 bilinear, mapped to [-1, 1]: what the Inception
  weights expect, the same as torchvision's ``transform_input`` applied to ImageNet-normalised input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["softmax_kl", "psnr", "ssim", "gaussian_window", "Subspaces", "fit_subspaces", "nearest_subspace",
           "fid_features", "frechet_distance", "feature_statistics", "fid", "inception_net", "inception_inputs"]

SSIM_K1, SSIM_K2, SSIM_WINDOW, SSIM_SIGMA = 0.01, 0.03, 11, 1.5


# ----------------------------------------------------------------------------- PSNR / SSIM
def softmax_kl(reference: Tensor, candidate: Tensor, temperature: float = 1.0) -> Tensor:
    """``KL(softmax(reference / T) || softmax(candidate / T))`` of two ``(N, classes)`` logit tensors,
    averaged over the N rows (a tensor: differentiable in both)."""
    log_p = torch.log_softmax(reference / temperature, dim=1)
    log_q = torch.log_softmax(candidate / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def psnr(x: Tensor, y: Tensor, peak: float = 1.0) -> float:
    """PSNR in dB of ``x`` against ``y`` (the mean squared error over everything; ``inf`` if equal)."""
    mse = float((x.double() - y.double()).square().mean())
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float64) -> Tensor:
    """A ``size x size`` Gaussian window of standard deviation ``sigma`` summing to 1."""
    r = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-r.square() / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_map(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """The SSIM map ``(N, C, H-10, W-10)`` of images ``x``, ``y`` ``(N, C, H, W)`` (float64)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim compares two (N, C, H, W) batches of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    x, y = x.double(), y.double()
    c = x.shape[1]
    w = gaussian_window().to(x.device).expand(c, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, batch_size: int = 256) -> float:
    """Mean SSIM (Wang et al. 2004) over images, channels and valid window positions."""
    if x.shape != y.shape:
        raise ValueError(f"ssim compares batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    total, count = 0.0, 0
    for i in range(0, x.shape[0], batch_size):
        m = ssim_map(x[i:i + batch_size], y[i:i + batch_size], data_range)
        total += float(m.sum())
        count += m.numel()
    return total / max(count, 1)


# ----------------------------------------------------------------------------- nearest subspace
@dataclass
class Subspaces:
    """Per class: ``means[k]`` (zeros when uncentred) and an orthonormal basis ``bases[k]`` (d, r_k);
    ``None`` for a class without training features."""

    means: List[Optional[Tensor]]
    bases: List[Optional[Tensor]]
    centred: bool
    components: int


def fit_subspaces(features: Tensor, labels: Tensor, num_classes: int, components: int = 10,
                  centred: bool = True) -> Subspaces:
    """Each class's principal subspace of ``features`` (n, d): the top ``min(components, n_k, d)``
    right singular vectors of the class's features, after removing their mean when ``centred``."""
    if components < 1:
        raise ValueError(f"components must be >= 1, got {components}")
    z = features.detach().double().cpu()
    labels = labels.cpu()
    means: List[Optional[Tensor]] = []
    bases: List[Optional[Tensor]] = []
    for k in range(num_classes):
        zk = z[labels == k]
        if zk.shape[0] == 0:
            means.append(None)
            bases.append(None)
            continue
        mean = zk.mean(0) if centred else torch.zeros(z.shape[1], dtype=z.dtype)
        r = min(components, zk.shape[0], z.shape[1])
        _, _, vh = torch.linalg.svd(zk - mean, full_matrices=False)
        means.append(mean)
        bases.append(vh[:r].T.contiguous())
    return Subspaces(means, bases, centred, components)


def nearest_subspace(subspaces: Subspaces, features: Tensor) -> Tuple[Tensor, Tensor]:
    """``(predictions (n,), residuals (n, classes))``: each feature's residual norm after projecting
    onto every class's subspace (``inf`` for a class fitted on nothing) and the class of the smallest."""
    z = features.detach().double().cpu()
    residuals = torch.full((z.shape[0], len(subspaces.bases)), math.inf, dtype=torch.float64)
    for k, (mean, basis) in enumerate(zip(subspaces.means, subspaces.bases)):
        if basis is None:
            continue
        centred = z - mean
        residuals[:, k] = (centred - (centred @ basis) @ basis.T).norm(dim=1)
    return residuals.argmin(1), residuals


# ----------------------------------------------------------------------------- FID
def inception_inputs(images: Tensor) -> Tensor:
    """[0, 1] images -> the Inception network's input: RGB, 299x299 (bilinear), in [-1, 1]."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"FID's Inception network reads grey or RGB images, got {images.shape[1]} channels")
    x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
    return x * 2 - 1


@torch.no_grad()
def fid_features(images: Tensor, net: nn.Module, prepare: Optional[Callable[[Tensor], Tensor]] = inception_inputs,
                 batch_size: int = 64, device=None) -> Tensor:
    """Features (float64, CPU, flattened to (N, D)) of ``images`` in [0, 1] under ``net`` (run in eval
    mode, its mode restored), each batch passed through ``prepare`` first (None: as they are)."""
    device = device or next(iter(net.parameters()), torch.empty(0)).device
    was = net.training
    net.eval()
    out = []
    try:
        for i in range(0, images.shape[0], batch_size):
            x = images[i:i + batch_size].to(device)
            if prepare is not None:
                x = prepare(x)
            f = net(x)
            if isinstance(f, (tuple, list)):  # an Inception in training mode returns (logits, aux)
                f = f[0]
            out.append(f.flatten(1).double().cpu())
    finally:
        net.train(was)
    return torch.cat(out)


def feature_statistics(features: Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov``: unbiased, n - 1) of ``features`` (n, D), float64."""
    f = features.double().cpu().numpy()
    if f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))`` for PSD ``S1``, ``S2`` (float64);
    ``(S1 S2)^(1/2)`` is similar to ``(S1^(1/2) S2 S1^(1/2))^(1/2)``, whose trace comes from a symmetric
    eigen-decomposition (no complex parts, no sqrtm iterations)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"FID statistics do not match: {mu1.shape}, {s1.shape} vs {mu2.shape}, {s2.shape}")
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    value = float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(value, 0.0)  # >= 0 in exact arithmetic; rounding can leave -1e-15


def fid(features1: Tensor, features2: Tensor) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (n, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"--fid-weights: {path} is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - several types for garbage
        raise ValueError(f"--fid-weights: {path} is not a readable weights file ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"--fid-weights: {path} does not hold a state dict of tensors")
    return state


def inception_net(weights: Union[str, Path], device="cpu") -> nn.Module:
    """torchvision's Inception-v3 (``weights=None, aux_logits=True, init_weights=False``) with the
    state dict in ``weights`` (safetensors, or a ``torch.load(weights_only=True)`` file), ``fc``
    replaced by an identity: 2048-d pool features, in eval mode. A file that is not an Inception-v3
    state dict is one ``ValueError``."""
    from torchvision.models import inception_v3

    path = Path(weights)
    state = _read_state_dict(path)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:200]
        raise ValueError(f"--fid-weights: {path} is not an Inception-v3 state dict ({detail})") from None
    net.fc = nn.Identity()
    return net.to(device).eval()
