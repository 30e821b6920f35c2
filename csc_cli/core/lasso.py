"""The convolutional Lasso and the one solver every CSC computation in ``csc`` goes through.

Problem, per sample, with ``A`` the synthesis operator of a geometry -- a
:class:`~csc_cli.core.operators.ConvGeometry` (sparse coding) or a
:class:`~csc_cli.core.operators.TransposedConvGeometry` (sparse deconvolution)::

    z* = argmin_z  lam * ||z||_1 + mu/2 * ||z||_2^2 + 1/2 * ||x - A z||_2^2     (z >= 0 if nonneg)

Iterations (``t`` the step size, ``prox`` the proximal map of ``t * (lam |.| + mu/2 |.|^2)``)::

    z_k = prox(y_k + t * A^T (x - A g_k))

* ``'ista'``: ``y_k = g_k = z_{k-1}``.
* ``'fista'`` (textbook, Beck & Teboulle): ``y_k = g_k = z_{k-1} + beta_k (z_{k-1} - z_{k-2})``.
* ``'heavy_ball'``: ``y_k`` extrapolated as in FISTA but the gradient taken at ``g_k = z_{k-1}``,
  which is what the SDNet authors' code does for K >= 3. For K <= 2 all three are identical
  (``beta_2 = 0``): with ``z_0 = 0``, step 1 is ``relu(t A^T x - lam t)``.

A :class:`Relaxation` moves the solver continuously away from the plain Lasso, for the continuation
path from a conv to a CSC layer (:mod:`csc_cli.continuation`): ``lam_scale`` multiplies lam,
``leak`` lets a non-negative code keep that share of its negative part (``leak = 1`` is the signed
soft threshold), and ``tail`` weighs the steps after the first (the output is
``z_1 + tail * (z_K - z_1)``; ``tail = 0`` runs one step). ``Relaxation()`` is the plain solver.

Three ways to differentiate the K-step code: ``'unrolled'`` (autograd through every step, as in the
paper), ``'recompute'`` (the same gradients, but only the input is kept and the K steps are run
again during backward: memory of one conv, one extra forward of compute) and ``'implicit'``
(differentiate the Lasso's fixed point on its support, memory independent of K; exact when the K
steps have converged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..choices import BACKWARDS, METHODS
from .operators import Geometry

Number = Union[float, Tensor]


# ------------------------------------------------------------------ proximal maps
def soft_threshold(v: Tensor, thresh: Number) -> Tensor:
    """Prox of ``thresh * ||.||_1``: ``sign(v) * max(|v| - thresh, 0)``."""
    return torch.sign(v) * F.relu(v.abs() - thresh)


def nonneg_soft_threshold(v: Tensor, thresh: Number) -> Tensor:
    """Prox of ``thresh * ||.||_1 + indicator(z >= 0)``: ``max(v - thresh, 0)``."""
    return F.relu(v - thresh)


def prox_l1(v: Tensor, thresh: Number, *, nonneg: bool = True, mu_step: Number = 0.0, leak: float = 0.0) -> Tensor:
    """Prox of ``t * (lam ||.||_1 + mu/2 ||.||^2)`` (with ``thresh = lam t``, ``mu_step = mu t``),
    restricted to ``z >= 0`` when ``nonneg``: the (non-negative) soft threshold, then the elastic-net
    shrink ``1 / (1 + mu t)``. ``leak > 0`` (non-negative codes on the continuation path) keeps that
    share of the negative part: :func:`leaky_soft_threshold`."""
    if nonneg and leak:
        out = leaky_soft_threshold(v, thresh, leak)
    else:
        out = nonneg_soft_threshold(v, thresh) if nonneg else soft_threshold(v, thresh)
    return out if _is_zero(mu_step) else out / (1.0 + mu_step)


def _is_zero(value: Number) -> bool:
    return not isinstance(value, Tensor) and value == 0


@dataclass(frozen=True)
class Relaxation:
    """A point on the path from a conv (one signed step at lam 0) to the plain K-step Lasso solver
    (see the module docstring). Each value is in [0, 1]; ``Relaxation()`` changes nothing."""

    lam_scale: float = 1.0
    leak: float = 0.0
    tail: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lam_scale", "leak", "tail"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"relaxation {name} must be a number in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))

    @property
    def plain(self) -> bool:
        """True when the solver is the plain Lasso solver (nothing relaxed)."""
        return self.lam_scale == 1.0 and self.leak == 0.0 and self.tail == 1.0


PLAIN = Relaxation()


def leaky_soft_threshold(v: Tensor, thresh: Number, leak: float) -> Tensor:
    """``max(v - thresh, 0) - leak * max(-v - thresh, 0)``: the non-negative soft threshold at
    ``leak = 0``, the signed one at ``leak = 1``."""
    out = nonneg_soft_threshold(v, thresh)
    return out if leak == 0.0 else out - leak * F.relu(-v - thresh)


# ------------------------------------------------------------------ objective
@dataclass
class LassoTerms:
    """Per-sample terms of the Lasso objective, each of shape ``(N,)``."""

    objective: Tensor
    data: Tensor
    l1: Tensor


def _per_sample(t: Tensor) -> Tensor:
    return t.flatten(1).sum(dim=1)


def _lam_view(lam: Tensor, ndim: int) -> Tensor:
    """A scalar stays a scalar; a per-sample ``(N,)`` lam broadcasts over ``(N, C, *size)``."""
    return lam if lam.dim() == 0 else lam.reshape(-1, *([1] * (ndim - 1)))


def lasso_terms(
    x: Tensor, z: Tensor, geometry: Geometry, weight: Tensor, lam: Number, mu: float = 0.0
) -> LassoTerms:
    """``objective = lam ||z||_1 + mu/2 ||z||^2 + 1/2 ||x - A z||^2`` per sample, with its parts
    (``data`` is the squared-error term, ``l1`` the *weighted* sparsity term ``lam ||z||_1``)."""
    lam_t = torch.as_tensor(lam, dtype=z.dtype, device=z.device)
    residual = x - geometry.synthesis(z, weight, x.shape[2:])
    data = 0.5 * _per_sample(residual.square())
    l1 = _per_sample(z.abs()) * lam_t.reshape(-1)
    objective = data + l1
    if mu:
        objective = objective + 0.5 * mu * _per_sample(z.square())
    return LassoTerms(objective=objective, data=data, l1=l1)


@dataclass
class SolverTrace:
    """Per-step diagnostics, each ``(K, N)``: row ``k`` describes ``z_{k+1}``."""

    objective: Tensor
    data: Tensor
    l1: Tensor
    nonzero: Tensor  # fraction of non-zero code entries
    rel_change: Tensor  # ||z_k - z_{k-1}|| / max(||z_k||, tiny)


# ------------------------------------------------------------------ iterations
def fista_momentum(steps: int) -> Tuple[float, ...]:
    """``beta_k`` for k = 1..steps (textbook FISTA, ``t_1 = 1``); ``beta_1 = beta_2 = 0``."""
    betas, tk = [0.0], 1.0
    for _ in range(1, steps):
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * tk * tk)) / 2.0
        betas.append((tk - 1.0) / t_next)
        tk = t_next
    return tuple(betas)


def _iterate(
    x: Tensor,
    weight: Tensor,
    geometry: Geometry,
    lam: Tensor,
    step: Tensor,
    steps: int,
    nonneg: bool,
    mu: float,
    method: str,
    z0: Optional[Tensor],
    trace: Optional[list],
    surrogate: float = 0.0,
    leak: float = 0.0,
    tail: float = 1.0,
) -> Tensor:
    """The solver loop. Works with or without autograd; appends per-step diagnostics to ``trace``
    only when one is given (so diagnostics cost nothing when off). ``surrogate > 0`` (non-negative
    codes only) keeps the forward values but back-propagates through a softplus of temperature
    ``surrogate * lam * t`` instead of the threshold's step function: an attacker's tool against
    gradient masking by dead codes, never used in training or evaluation. ``leak`` and ``tail``: see
    :class:`Relaxation` (``tail = 0`` runs one step)."""
    if tail == 0.0:
        steps = 1
    leak = leak if nonneg else 0.0
    size = x.shape[2:]
    step = step.to(weight.dtype)
    thresh = _lam_view(lam.to(weight.dtype), x.dim()) * step
    mu_step = mu * step if mu else 0.0
    # Fold the step into the analysis weight, and, for the usual non-negative code with one lam for
    # the batch, the threshold into the conv's bias: a step is then conv + add + relu.
    scaled = weight * step
    fold = nonneg and thresh.dim() == 0 and leak == 0.0
    bias = (-thresh).expand(geometry.out_channels) if fold else None

    def prox(v: Tensor) -> Tensor:
        if surrogate and nonneg and not leak:  # (on the continuation path: no attack-time surrogate)
            u = v if fold else v - thresh
            scale = (surrogate * thresh).clamp_min(1e-12) if isinstance(thresh, Tensor) else max(surrogate * thresh, 1e-12)
            soft = scale * F.softplus(u / scale)
            out = F.relu(u).detach() + (soft - soft.detach())  # exactly relu(u) in value
            return out if _is_zero(mu_step) else out / (1.0 + mu_step)
        if fold:
            # in place: v is a fresh conv output that autograd does not keep (saves a pass and an
            # allocation per step; relu keeps its output, which is what its backward needs)
            out = F.relu(v, inplace=True)
            return out if _is_zero(mu_step) else out / (1.0 + mu_step)
        return prox_l1(v, thresh, nonneg=nonneg, mu_step=mu_step, leak=leak)

    def step_from(y: Optional[Tensor], grad_at: Optional[Tensor]) -> Tensor:
        """``prox(y + t A^T (x - A grad_at))``; ``None`` stands for the all-zero code."""
        residual = x if grad_at is None else x - geometry.synthesis(grad_at, weight, size)
        v = geometry.analysis(residual, scaled, bias)
        return prox(v if y is None else v.add_(y))

    betas = fista_momentum(steps)
    z_prev: Optional[Tensor] = None
    z = step_from(z0, z0)
    _record(trace, x, z, z0, geometry, weight, lam, mu)
    first = z
    for k in range(1, steps):
        beta = 0.0 if method == "ista" else betas[k]
        y = z if beta == 0.0 else z + beta * (z - (z_prev if z_prev is not None else torch.zeros_like(z)))
        grad_at = z if method == "heavy_ball" else y
        z_prev, z = z, step_from(y, grad_at)
        _record(trace, x, z, z_prev, geometry, weight, lam, mu)
    if steps > 1 and tail != 1.0:  # the later steps phased in: z_1 + tail (z_K - z_1)
        z = first + tail * (z - first)
    return z


@torch.no_grad()
def _record(trace, x, z, z_prev, geometry, weight, lam, mu) -> None:
    if trace is None:
        return
    terms = lasso_terms(x, z, geometry, weight, lam, mu)
    nz = _per_sample((z != 0).to(z.dtype)) / z[0].numel()
    diff = z if z_prev is None else z - z_prev
    denom = _per_sample(z.square()).sqrt().clamp_min(torch.finfo(z.dtype).tiny)
    trace.append((terms.objective, terms.data, terms.l1, nz, _per_sample(diff.square()).sqrt() / denom))


# ------------------------------------------------------------------ implicit backward
def _batched_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(dim=1).reshape(-1, *([1] * (a.dim() - 1)))


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor], rhs: Tensor, *, iters: int = 100, tol: float = 1e-6
) -> Tensor:
    """Solve ``apply(v) = rhs`` for a symmetric PSD operator, independently per sample (dim 0).
    Stops when every sample's residual is below ``tol`` relative to its right-hand side."""
    tiny = torch.finfo(rhs.dtype).tiny
    sol = torch.zeros_like(rhs)
    res = rhs.clone()
    direction = res.clone()
    rs = _batched_dot(res, res)
    target = (tol * tol) * rs
    for i in range(iters):
        hp = apply(direction)
        alpha = rs / _batched_dot(direction, hp).clamp_min(tiny)
        sol = sol + alpha * direction
        res = res - alpha * hp
        rs_new = _batched_dot(res, res)
        if i % 5 == 4 and bool((rs_new <= target).all()):
            break
        direction = res + (rs_new / rs.clamp_min(tiny)) * direction
        rs = rs_new
    return sol


class _ImplicitLasso(torch.autograd.Function):
    """Forward: the K solver steps without a graph. Backward: implicit differentiation of the Lasso
    optimality condition on the support ``S`` of the code::

        (A_S^T A_S + mu I) z_S = A_S^T x - lam s_S

    so with ``H v = dL/dz_S`` (solved by CG, ``v = 0`` off ``S``): ``dL/dx = A v``,
    ``dL/dD = d/dD <v, A^T (x - A z)>`` at fixed ``x, z, v``, and ``dL/dlam = -<v, sign z>``.
    Only ``x``, ``D`` and ``z`` are kept for backward, whatever K is."""

    @staticmethod
    def forward(ctx, x, weight, lam, step, geometry, steps, nonneg, mu, method, z0, cg_iters, cg_tol, damping):
        with torch.no_grad():
            z = _iterate(x, weight, geometry, lam, step, steps, nonneg, mu, method, z0, None)
        ctx.save_for_backward(x, weight, z, lam)
        ctx.settings = (geometry, nonneg, float(mu), cg_iters, cg_tol, float(damping))
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z):
        x, weight, z, lam = ctx.saved_tensors
        geometry, nonneg, mu, cg_iters, cg_tol, damping = ctx.settings
        size = x.shape[2:]
        support = (z > 0) if nonneg else (z != 0)
        mask = support.to(grad_z.dtype)

        def hessian(u: Tensor) -> Tensor:
            out = geometry.analysis(geometry.synthesis(u, weight, size), weight)
            if mu or damping:
                out = out + (mu + damping) * u
            return out * mask

        v = conjugate_gradient(hessian, grad_z * mask, iters=cg_iters, tol=cg_tol)
        grad_x = grad_w = grad_lam = None
        if ctx.needs_input_grad[0]:
            grad_x = geometry.synthesis(v, weight, size)
        if ctx.needs_input_grad[1]:
            with torch.enable_grad():
                w = weight.detach().requires_grad_(True)
                residual = x.detach() - geometry.synthesis(z, w, size)
                (grad_w,) = torch.autograd.grad((v * geometry.analysis(residual, w)).sum(), w)
        if ctx.needs_input_grad[2]:
            per_sample = -_batched_dot(v, torch.sign(z)).reshape(-1)
            grad_lam = per_sample.sum() if lam.dim() == 0 else per_sample
        return grad_x, grad_w, grad_lam, None, None, None, None, None, None, None, None, None, None


# ------------------------------------------------------------------ entry point
def solve_lasso(
    x: Tensor,
    weight: Tensor,
    geometry: Geometry,
    lam: Number,
    step: Number,
    steps: int,
    *,
    nonneg: bool = True,
    mu: float = 0.0,
    method: str = "fista",
    backward: str = "unrolled",
    z0: Optional[Tensor] = None,
    trace: bool = False,
    cg_iters: int = 100,
    cg_tol: float = 1e-6,
    surrogate: float = 0.0,
    damping: float = 0.0,
    relaxation: Optional[Relaxation] = None,
) -> Tuple[Tensor, Optional[SolverTrace]]:
    """Run ``steps`` proximal-gradient steps on the convolutional Lasso from ``z0`` (zeros if None).

    Args:
        x: input ``(N, C_in, *size)``.
        weight: the dictionary ``D``, conv-weight shaped (atoms are used as given: normalise first).
        lam: sparsity weight, a scalar or a per-sample ``(N,)`` tensor (differentiable if it
            requires grad).
        step: the step ``t`` (constant for autograd), e.g. ``0.9 / ||A||^2``.
        method: ``'fista'`` (textbook), ``'ista'``, or ``'heavy_ball'`` (the SDNet authors' K >= 3).
        backward: ``'unrolled'`` or ``'implicit'`` (see module docstring).
        trace: also return per-step diagnostics (no extra work when False).
        surrogate: back-propagate through a smoothed threshold (attacks only; see ``_iterate``).
        damping: Tikhonov term added to the implicit backward's system ``(A_S^T A_S + mu I)``: keeps
            it well posed when the code is far from converged and its support too large (attacks).
        relaxation: a point on the continuation path (:class:`Relaxation`); None or
            ``Relaxation()`` is the plain solver. Not with ``backward='implicit'`` (which
            differentiates the plain Lasso's fixed point).

    Returns ``(z, trace)``: the code ``(N, C_out, *out_size)`` and a :class:`SolverTrace` or None.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, got {backward!r}")
    if mu < 0:
        raise ValueError(f"mu must be >= 0, got {mu}")
    # a Python number takes the dictionary's dtype: as_tensor alone would round it to float32
    lam_t = torch.as_tensor(lam, dtype=None if isinstance(lam, Tensor) else weight.dtype, device=x.device)
    if not lam_t.is_floating_point():
        lam_t = lam_t.to(weight.dtype)
    if lam_t.dim() > 1 or (lam_t.dim() == 1 and lam_t.shape[0] != x.shape[0]):
        raise ValueError(f"lam must be a scalar or one value per sample ({x.shape[0]}), got shape {tuple(lam_t.shape)}")
    if not isinstance(lam, Tensor) and lam < 0:  # tensors are checked by their owner: no sync here
        raise ValueError(f"lam must be >= 0, got {lam}")
    step_t = torch.as_tensor(step, dtype=None if isinstance(step, Tensor) else weight.dtype, device=x.device).detach()
    if not step_t.is_floating_point():
        step_t = step_t.to(weight.dtype)
    relax = PLAIN if relaxation is None else relaxation
    if not relax.plain:
        if backward == "implicit":
            raise ValueError("a relaxed solver (continuation path) needs backward='unrolled' or 'recompute': the "
                             "implicit backward differentiates the plain Lasso's fixed point")
        if relax.lam_scale != 1.0:
            lam_t = lam_t * relax.lam_scale
    leak, tail = relax.leak, relax.tail
    records: Optional[list] = [] if trace else None
    if backward == "implicit" and torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or lam_t.requires_grad
    ):
        # lam may be a module's buffer that is changed in place before backward (a test-time lambda
        # set and restored around a forward): keep our own copy for the backward pass
        z = _ImplicitLasso.apply(
            x, weight, lam_t.clone(), step_t, geometry, steps, nonneg, mu, method, z0, cg_iters, cg_tol, damping
        )
        if records is not None:
            _trace_again(records, x, weight, geometry, lam_t, step_t, steps, nonneg, mu, method, z0)
    elif backward == "recompute" and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        from torch.utils.checkpoint import checkpoint

        def run(x_, w_, lam_):
            return _iterate(x_, w_, geometry, lam_, step_t, steps, nonneg, mu, method, z0, None, surrogate, leak, tail)

        z = checkpoint(run, x, weight, lam_t.clone(), use_reentrant=False, preserve_rng_state=False)
        if records is not None:
            _trace_again(records, x, weight, geometry, lam_t, step_t, steps, nonneg, mu, method, z0, leak, tail)
    else:
        z = _iterate(x, weight, geometry, lam_t, step_t, steps, nonneg, mu, method, z0, records, surrogate,
                     leak, tail)
    return z, (_stack(records) if records is not None else None)


@torch.no_grad()
def _trace_again(records, x, weight, geometry, lam, step, steps, nonneg, mu, method, z0, leak=0.0,
                 tail=1.0) -> None:
    _iterate(x, weight, geometry, lam, step, steps, nonneg, mu, method, z0, records, 0.0, leak, tail)


def _stack(records: Sequence[tuple]) -> SolverTrace:
    columns = [torch.stack(col) for col in zip(*records)]
    return SolverTrace(*columns)
