"""Rate reduction and the closed-loop transcription (CTRL / CSC-CTRL) objective: pure tensor math.

Features are the **rows** of ``Z`` (shape ``(n, d)``), each l2-normalised onto the unit sphere by the
encoder (these functions never normalise: unnormalised features let an encoder inflate every rate by
scaling). ``eps2`` is epsilon **squared** (the CTRL config's ``EPS``), 0.5 by default::

    R(Z)            = 1/2 logdet(I_d + d / (n eps2) Z^T Z)                     (coding rate)
    Rc(Z | labels)  = sum_k (n_k / n) R(Z_k)                                   (compressed rate)
    dR(Z)           = R(Z) - Rc(Z)                                             (rate reduction)
    dR(Z_k, Zh_k)   = R([Z_k; Zh_k]) - 1/2 R(Z_k) - 1/2 R(Zh_k)                (pairwise; n = 2 n_k
                                                                                in the first R)

``R(Z_k)`` always uses the class's own count ``n = n_k``; a class absent from the batch has rate 0
and weight 0. Every ``dR`` is >= 0 (concavity of logdet); the pairwise term is 0 exactly when
``Z_k^T Z_k = Zh_k^T Zh_k`` (it matches class second moments, not individual samples).

The game (:func:`ctrl_objective`), with ``Zh = f(g(Z))`` and ``zh_i`` inheriting ``x_i``'s label:

* ``'multi'`` (supervised): ``T = dR(Z) + dR(Zh) + sum_k dR(Z_k, Zh_k)``;
* ``'binary'`` (label-free): ``T = dR(Z, Zh) = R([Z; Zh]) - 1/2 R(Z) - 1/2 R(Zh)``, i.e. Z and Zh
  are the two classes.

The encoder **maximises** ``T`` (loss ``-T``), the decoder **minimises** it (loss ``+T``).

Numerics: every logdet runs in float64 when the features are float64 and in float32 otherwise,
outside autocast, via a batched Cholesky (``logdet = 2 sum log diag L``). The matrices
``I + c G`` (``G`` a Gram matrix, ``c >= 0``) are symmetric with eigenvalues >= 1, so Cholesky only
fails through rounding at extreme scales; then it is retried with a growing diagonal jitter and
finally replaced by ``torch.linalg.slogdet``. Whenever a Gram matrix has fewer rows than columns the
smaller one is used (Sylvester: ``logdet(I_d + c Z^T Z) = logdet(I_n + c Z Z^T)``), which is the
same value and keeps Cholesky well-conditioned with small classes (``n_k < d``).

Rates are in nats. Reference magnitudes (d = 128, n = 1600, 10 classes of 160, eps2 = 0.5): the
upper bound for unit features ``R <= d/2 ln(1 + 1/eps2) = 70.3``; random unit features
``R ~ 69.2, dR ~ 9.9``; ten orthogonal 12-dim subspaces ``dR ~ 49``. Multi mode needs roughly
``n_k >= d`` samples per class per batch (a class's rate is rank-capped by ``n_k``), see
:func:`small_class_warning`; compare values only at a fixed batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CTRL_MODES",
    "RateReduction",
    "class_rates",
    "coding_rate",
    "compressed_rate",
    "ctrl_objective",
    "pairwise_rate_reduction",
    "rate_reduction",
    "small_class_warning",
]

CTRL_MODES = ("multi", "binary")

# Cholesky retries: jitter = _JITTER_START * trace(A)/m, times 10 per retry, then slogdet.
_JITTER_START = 1e-6
_JITTER_TRIES = 4


# ------------------------------------------------------------------ validation
def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_features(Z: Tensor, name: str = "Z") -> None:
    if not isinstance(Z, Tensor):
        raise ValueError(f"{name} must be a tensor of shape (n, d), got {type(Z).__name__}")
    if Z.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, d) with features as rows, got shape {tuple(Z.shape)}")
    if Z.shape[0] < 1 or Z.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(Z.shape)}")
    if not (Z.is_floating_point()):
        raise ValueError(f"{name} must be a floating-point tensor, got {Z.dtype}")
    bad = int((~torch.isfinite(Z)).sum())
    if bad:
        raise ValueError(f"features are not finite: {name} has {bad} NaN/inf entries of {Z.numel()}")


def _check_pair(Z: Tensor, Zh: Tensor) -> None:
    _check_features(Z, "Z")
    _check_features(Zh, "Zh")
    if Zh.shape != Z.shape:
        raise ValueError(
            f"Zh must have Z's shape (one decoded feature per feature, same d): Z {tuple(Z.shape)}, Zh {tuple(Zh.shape)}"
        )


def _check_eps2(eps2: float) -> float:
    eps2 = float(eps2)
    if not (math.isfinite(eps2) and eps2 > 0):
        raise ValueError(f"eps2 (epsilon squared) must be a positive finite number, got {eps2}")
    return eps2


def _check_labels(labels: Tensor, n: int, num_classes: Optional[int]) -> Tuple[Tensor, int]:
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a 1-D integer tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != n or n < 1:
        raise ValueError(f"labels must be 1-D of length n = {n} (one per feature row), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    labels = labels.long()
    lo, hi = int(labels.min()), int(labels.max())
    if num_classes is None:
        num_classes = hi + 1
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, num_classes = {num_classes}), got values in [{lo}, {hi}]")
    return labels, num_classes


# ------------------------------------------------------------------ batched logdet
def _chol_logdet(A: Tensor) -> Tensor:
    """``logdet`` of a batch ``(B, m, m)`` of symmetric positive definite matrices: ``2 sum log diag L``
    with ``L`` from one batched Cholesky. Entries whose factorisation fails are retried with a diagonal
    jitter of ``1e-6 * trace/m`` (x10 per retry); if that still fails, ``slogdet`` (log |det|)."""
    L, info = torch.linalg.cholesky_ex(A)
    failed = info > 0
    if not bool(failed.any()):
        return 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    m = A.shape[-1]
    eye = torch.eye(m, dtype=A.dtype, device=A.device)
    base = (_JITTER_START * torch.diagonal(A, dim1=-2, dim2=-1).sum(-1) / m).detach()
    for i in range(_JITTER_TRIES):
        jitter = torch.where(failed, base * (10.0**i), torch.zeros_like(base))
        L, info = torch.linalg.cholesky_ex(A + jitter[:, None, None] * eye)
        if not bool((info > 0).any()):
            return 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return torch.linalg.slogdet(A).logabsdet


def _gram(P: Tensor) -> Tensor:
    """The smaller Gram matrix of a stack ``P`` of shape ``(B, r, d)``: ``P P^T`` (r x r) if r < d, else
    ``P^T P`` (d x d). Both give the same ``logdet(I + c G)`` (Sylvester); zero (padding) rows add
    nothing to ``P^T P`` and only identity rows/columns to ``I + c P P^T``."""
    if P.shape[-2] < P.shape[-1]:
        return P @ P.transpose(-2, -1)
    return P.transpose(-2, -1) @ P


def _rates_of_grams(G: Tensor, scale: Tensor) -> Tensor:
    """``1/2 logdet(I + scale_b G_b)`` for a stack ``G`` (B, m, m) and per-entry scales (B,)."""
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    return 0.5 * _chol_logdet(eye + scale[:, None, None] * G)


def _pad_by_class(X: Tensor, labels: Tensor, counts: Tensor, num_classes: int, rows: int) -> Tensor:
    """Scatter the rows of X (n, d) into a zero tensor (K, rows, d): class k's rows first, in order."""
    n, d = X.shape
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(n, device=X.device) - starts[sorted_labels]
    P = X.new_zeros((num_classes, rows, d))
    return P.index_put((sorted_labels, pos), X[order])


def _class_scales(counts: Tensor, d: int, eps2: float, dtype: torch.dtype, factor: float = 1.0) -> Tensor:
    """``d / (factor n_k eps2)`` per class, 0 for an absent class (its rate is then logdet(I) = 0)."""
    c = counts.to(dtype)
    return torch.where(counts > 0, d / (factor * eps2 * c.clamp(min=1)), torch.zeros_like(c))


def _no_autocast(Z: Tensor):
    return torch.autocast(device_type=Z.device.type, enabled=False)


# ------------------------------------------------------------------ rates
def coding_rate(Z: Tensor, eps2: float = 0.5) -> Tensor:
    """Coding rate of the rows of ``Z`` (n, d), in nats::

        R(Z) = 1/2 logdet(I_d + d / (n eps2) Z^T Z) = 1/2 logdet(I_n + d / (n eps2) Z Z^T)

    (the n x n form, identical by Sylvester's determinant identity, is used when n < d). A scalar
    tensor, float64 for float64 input and float32 otherwise, differentiable in ``Z``; computed outside
    autocast via Cholesky."""
    _check_features(Z)
    eps2 = _check_eps2(eps2)
    n, d = Z.shape
    dtype = _compute_dtype(Z)
    with _no_autocast(Z):
        G = _gram(Z.to(dtype)[None])
        scale = torch.full((1,), d / (n * eps2), dtype=dtype, device=Z.device)
        return _rates_of_grams(G, scale)[0]


def _class_rates_checked(Z: Tensor, labels: Tensor, num_classes: int, eps2: float) -> Tuple[Tensor, Tensor]:
    n, d = Z.shape
    dtype = _compute_dtype(Z)
    counts = torch.bincount(labels, minlength=num_classes)
    nmax = int(counts.max())
    with _no_autocast(Z):
        P = _pad_by_class(Z.to(dtype), labels, counts, num_classes, nmax)
        rates = _rates_of_grams(_gram(P), _class_scales(counts, d, eps2, dtype))
    return rates, counts.to(dtype) / n


def class_rates(Z: Tensor, labels: Tensor, num_classes: Optional[int] = None, eps2: float = 0.5) -> Tuple[Tensor, Tensor]:
    """Per-class coding rates and weights ``(rates, weights)``, both of shape ``(num_classes,)``::

        rates[k]   = R(Z_k) = 1/2 logdet(I + d / (n_k eps2) Z_k^T Z_k)     (n = n_k, the class's count)
        weights[k] = n_k / n

    An absent class has rate 0 and weight 0. All classes go through ONE batched Cholesky: the rows of
    each class are scattered into a zero-padded (K, max n_k, d) stack (zero rows add nothing to
    ``Z_k^T Z_k``) with a per-class scale ``d / (n_k eps2)``; the Gram side (n_k or d) is the smaller.
    ``num_classes`` defaults to ``labels.max() + 1``."""
    _check_features(Z)
    eps2 = _check_eps2(eps2)
    labels, num_classes = _check_labels(labels, Z.shape[0], num_classes)
    return _class_rates_checked(Z, labels, num_classes, eps2)


def compressed_rate(Z: Tensor, labels: Tensor, num_classes: Optional[int] = None, eps2: float = 0.5) -> Tensor:
    """``Rc(Z | labels) = sum_k (n_k / n) R(Z_k)`` (absent classes contribute nothing)."""
    rates, weights = class_rates(Z, labels, num_classes, eps2)
    return (weights * rates).sum()


@dataclass
class RateReduction:
    """``R = R(Z)``, ``Rc = sum_k w_k R(Z_k)``, ``dR = R - Rc`` (scalars, differentiable), with the
    per-class ``class_rates`` ``R(Z_k)`` and ``weights`` ``w_k = n_k / n`` (shape ``(K,)``)."""

    R: Tensor
    Rc: Tensor
    dR: Tensor
    class_rates: Tensor
    weights: Tensor


def rate_reduction(Z: Tensor, labels: Tensor, num_classes: Optional[int] = None, eps2: float = 0.5) -> RateReduction:
    """Rate reduction ``dR(Z) = R(Z) - sum_k (n_k / n) R(Z_k)`` (>= 0 by concavity of logdet), returned
    as a :class:`RateReduction` with its parts."""
    _check_features(Z)
    eps2 = _check_eps2(eps2)
    labels, num_classes = _check_labels(labels, Z.shape[0], num_classes)
    R = coding_rate(Z, eps2)
    rates, weights = _class_rates_checked(Z, labels, num_classes, eps2)
    Rc = (weights * rates).sum()
    return RateReduction(R=R, Rc=Rc, dR=R - Rc, class_rates=rates, weights=weights)


def _pairwise_rates(Z: Tensor, Zh: Tensor, labels: Tensor, num_classes: int, eps2: float):
    """``(R(Z_k), R(Zh_k), R([Z_k; Zh_k]), counts)`` for every class, from ONE Cholesky of a
    (3K, m, m) stack. The joint Gram is assembled from the two classes' Grams: ``P^T P`` form:
    ``G_joint = G_Z + G_Zh``; ``P P^T`` form: ``G_Z`` and ``G_Zh`` are the diagonal blocks of ``G_joint``."""
    n, d = Z.shape
    dtype = _compute_dtype(Z, Zh)
    counts = torch.bincount(labels, minlength=num_classes)
    nmax = int(counts.max())
    with _no_autocast(Z):
        Pz = _pad_by_class(Z.to(dtype), labels, counts, num_classes, nmax)
        Ph = _pad_by_class(Zh.to(dtype), labels, counts, num_classes, nmax)
        if 2 * nmax < d:
            Pj = torch.cat([Pz, Ph], dim=1)
            Gj = Pj @ Pj.transpose(-2, -1)  # (K, 2 nmax, 2 nmax); the diagonal blocks, zero-padded
            Gz = F.pad(Gj[:, :nmax, :nmax], (0, nmax, 0, nmax))
            Gh = F.pad(Gj[:, nmax:, nmax:], (0, nmax, 0, nmax))
        else:
            Gz = Pz.transpose(-2, -1) @ Pz  # (K, d, d)
            Gh = Ph.transpose(-2, -1) @ Ph
            Gj = Gz + Gh
        single = _class_scales(counts, d, eps2, dtype)
        joint = _class_scales(counts, d, eps2, dtype, factor=2.0)
        rates = _rates_of_grams(torch.cat([Gz, Gh, Gj]), torch.cat([single, single, joint]))
    K = num_classes
    return rates[:K], rates[K : 2 * K], rates[2 * K :], counts


def pairwise_rate_reduction(
    Z: Tensor, Zh: Tensor, labels: Tensor, num_classes: Optional[int] = None, eps2: float = 0.5
) -> Tuple[Tensor, Tensor]:
    """Class-by-class rate reduction between features and their transcriptions ``(total, per_class)``::

        per_class[k] = dR(Z_k, Zh_k) = R([Z_k; Zh_k]) - 1/2 R(Z_k) - 1/2 R(Zh_k)   (n = 2 n_k in the first R)
        total        = sum over classes present of per_class[k]

    ``Zh`` has ``Z``'s shape and row i of ``Zh`` carries ``labels[i]``. Each term is >= 0 and is 0
    exactly when ``Z_k^T Z_k = Zh_k^T Zh_k``; absent classes give 0. Batched over classes (one
    Cholesky for all 3K matrices)."""
    _check_pair(Z, Zh)
    eps2 = _check_eps2(eps2)
    labels, num_classes = _check_labels(labels, Z.shape[0], num_classes)
    rz, rh, rj, _ = _pairwise_rates(Z, Zh, labels, num_classes, eps2)
    per_class = rj - 0.5 * rz - 0.5 * rh
    return per_class.sum(), per_class


def small_class_warning(labels: Tensor, num_classes: Optional[int], d: int) -> Optional[str]:
    """A one-line message when some class present in ``labels`` has fewer than ``d`` samples (its rate
    ``R(Z_k)`` is rank-capped at ``n_k`` dimensions, so multi mode's ``Rc`` and pairwise terms are
    distorted; multi mode needs roughly ``n_k >= d`` per class per batch); ``None`` otherwise."""
    if not isinstance(labels, Tensor) or labels.dim() != 1:
        raise ValueError("labels must be a 1-D integer tensor")
    labels, num_classes = _check_labels(labels, labels.shape[0], num_classes)
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    small = [k for k, c in enumerate(counts) if 0 < c < d]
    if not small:
        return None
    shown = ", ".join(str(k) for k in small[:10]) + (", ..." if len(small) > 10 else "")
    return (
        f"{len(small)} class(es) in the batch have fewer than d = {d} samples (smallest n_k = "
        f"{min(counts[k] for k in small)}; classes {shown}): their rates are rank-capped at n_k, and "
        f"multi mode needs roughly >= d samples per class per batch (use a larger batch or mode='binary')"
    )


# ------------------------------------------------------------------ the game
def ctrl_objective(
    Z: Tensor,
    Zh: Tensor,
    labels: Optional[Tensor] = None,
    num_classes: Optional[int] = None,
    mode: str = "multi",
    eps2: float = 0.5,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """The CTRL game's value ``(T, terms)``; the encoder maximises ``T`` (loss ``-T``), the decoder
    minimises it (loss ``+T``).

    * ``mode='multi'`` (supervised; ``labels`` required, at least 2 classes in the batch)::

          T = dR(Z) + dR(Zh) + sum_k dR(Z_k, Zh_k)

      ``terms``: ``R_Z, Rc_Z, dR_Z, R_Zh, Rc_Zh, dR_Zh, pairwise`` (the sum over classes) and ``T``.
    * ``mode='binary'`` (label-free; ``labels``/``num_classes`` are ignored)::

          T = dR(Z, Zh) = R([Z; Zh]) - 1/2 R(Z) - 1/2 R(Zh)       (n = 2n in the first R)

      ``terms``: ``R_Z, R_Zh, R_joint, T``.

    ``terms`` are scalar tensors that stay attached to the graph (``.item()`` them for logging).
    ``Z`` and ``Zh`` (same shape (n, d), rows on the unit sphere) are features of ``x`` and of its
    reconstruction ``f(g(Z))``."""
    if mode not in CTRL_MODES:
        raise ValueError(f"mode must be one of {CTRL_MODES}, got {mode!r}")
    _check_pair(Z, Zh)
    eps2 = _check_eps2(eps2)
    n, d = Z.shape
    dtype = _compute_dtype(Z, Zh)
    if mode == "binary":
        with _no_autocast(Z):
            Zc, Zhc = Z.to(dtype), Zh.to(dtype)
            if 2 * n < d:
                Zj = torch.cat([Zc, Zhc])
                Gj = Zj @ Zj.T  # (2n, 2n); the diagonal blocks, zero-padded
                Gz = F.pad(Gj[:n, :n], (0, n, 0, n))
                Gh = F.pad(Gj[n:, n:], (0, n, 0, n))
            else:
                Gz = Zc.T @ Zc
                Gh = Zhc.T @ Zhc
                Gj = Gz + Gh
            scale = torch.tensor([d / (n * eps2)] * 2 + [d / (2 * n * eps2)], dtype=dtype, device=Z.device)
            R_Z, R_Zh, R_joint = _rates_of_grams(torch.stack([Gz, Gh, Gj]), scale)
        T = R_joint - 0.5 * R_Z - 0.5 * R_Zh
        return T, {"R_Z": R_Z, "R_Zh": R_Zh, "R_joint": R_joint, "T": T}

    if labels is None:
        raise ValueError("multi mode needs labels (use mode='binary' for the label-free game)")
    labels, num_classes = _check_labels(labels, n, num_classes)
    counts = torch.bincount(labels, minlength=num_classes)
    present = int((counts > 0).sum())
    if present < 2:
        raise ValueError(
            f"multi mode needs at least 2 classes in the batch, got {present} (rate reduction of one class is 0; "
            f"use mode='binary')"
        )
    with _no_autocast(Z):
        G = _gram(torch.stack([Z.to(dtype), Zh.to(dtype)]))
        scale = torch.full((2,), d / (n * eps2), dtype=dtype, device=Z.device)
        R_Z, R_Zh = _rates_of_grams(G, scale)
    rz, rh, rj, counts = _pairwise_rates(Z, Zh, labels, num_classes, eps2)
    weights = counts.to(dtype) / n
    Rc_Z = (weights * rz).sum()
    Rc_Zh = (weights * rh).sum()
    dR_Z = R_Z - Rc_Z
    dR_Zh = R_Zh - Rc_Zh
    pairwise = (rj - 0.5 * rz - 0.5 * rh).sum()
    T = dR_Z + dR_Zh + pairwise
    terms = {
        "R_Z": R_Z,
        "Rc_Z": Rc_Z,
        "dR_Z": dR_Z,
        "R_Zh": R_Zh,
        "Rc_Zh": Rc_Zh,
        "dR_Zh": dR_Zh,
        "pairwise": pairwise,
        "T": T,
    }
    return T, terms
