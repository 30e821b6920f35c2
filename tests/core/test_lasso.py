"""The Lasso solver against closed forms and an independent dense-matrix reference solve (scipy)."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from csc_cli.core import (
    ConvGeometry,
    dense_matrix,
    fista_momentum,
    lasso_terms,
    nonneg_soft_threshold,
    power_iteration,
    prox_l1,
    soft_threshold,
    solve_lasso,
)
from csc_cli.core.operators import normalize_atoms


def _problem(gen, *, mode="zeros", stride=1, size=(6, 6), cin=2, cout=4, kernel=3, padding=1):
    geom = ConvGeometry.create(2, cin, cout, kernel, stride=stride, padding=padding, padding_mode=mode)
    w = normalize_atoms(torch.randn(geom.weight_shape, generator=gen, dtype=torch.float64))
    x = torch.randn((2, cin, *size), generator=gen, dtype=torch.float64)
    lip, _, _ = power_iteration(geom, w, size)
    return geom, w, x, 1.0 / float(lip)


# ------------------------------------------------------------------ prox operators
def test_soft_threshold_closed_form():
    v = torch.tensor([-3.0, -0.5, 0.0, 0.2, 0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(soft_threshold(v, 0.5), torch.tensor([-2.5, 0, 0, 0, 0, 1.5], dtype=torch.float64))
    torch.testing.assert_close(nonneg_soft_threshold(v, 0.5), torch.tensor([0, 0, 0, 0, 0, 1.5], dtype=torch.float64))


@pytest.mark.parametrize("nonneg", [True, False])
def test_elastic_net_prox_minimises_its_objective(nonneg):
    """prox(v) = argmin_u 1/2 (u - v)^2 + thr |u| + mu_t/2 u^2 (u >= 0 if nonneg): compare with a
    brute-force search on a fine grid (an independent computation)."""
    thr, mu_t = 0.3, 0.25
    v = torch.linspace(-2, 2, 41, dtype=torch.float64)
    got = prox_l1(v, thr, nonneg=nonneg, mu_step=mu_t)
    grid = torch.linspace(0 if nonneg else -3, 3, 600001, dtype=torch.float64)
    for vi, gi in zip(v, got):
        cost = 0.5 * (grid - vi) ** 2 + thr * grid.abs() + 0.5 * mu_t * grid**2
        assert abs(float(grid[cost.argmin()] - gi)) < 2e-5
    # and the closed form itself
    expected = torch.clamp(v.abs() - thr, min=0) * v.sign() / (1 + mu_t)
    if nonneg:
        expected = expected.clamp(min=0)
    torch.testing.assert_close(got, expected)


# ------------------------------------------------------------------ solutions
@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("method", ["fista", "ista", "heavy_ball"])
def test_code_is_exactly_zero_when_lam_dominates(gen, nonneg, method):
    geom, w, x, step = _problem(gen)
    # lam >= ||A^T x||_inf per sample: 0 is optimal and every iterate from 0 stays there. (At an
    # exact tie the step folded into the conv weights can round either way: keep 1e-12 clear of it.)
    lam_max = geom.analysis(x, w).abs().flatten(1).amax(dim=1)
    z, _ = solve_lasso(x, w, geom, lam_max * (1 + 1e-12), step, 25, nonneg=nonneg, method=method)
    assert torch.count_nonzero(z) == 0
    z, _ = solve_lasso(x, w, geom, 0.9 * lam_max, step, 25, nonneg=nonneg, method=method)
    assert torch.count_nonzero(z) > 0


def _reference_solve(matrix, x, lam, mu, nonneg):
    """Dense float64 Lasso by L-BFGS-B with bounds (split z = u - w for the signed problem)."""
    a = matrix.T.numpy()  # synthesis, (n_in, n_code)
    n = a.shape[1]
    b = x.flatten().numpy()

    def f(params):
        z = params[:n] - (params[n:] if not nonneg else 0.0)
        r = a @ z - b
        obj = 0.5 * r @ r + lam * params.sum() + 0.5 * mu * (params @ params)
        g_z = a.T @ r
        grad = g_z + lam + mu * params[:n]
        if nonneg:
            return obj, grad
        return obj, np.concatenate([grad, -g_z + lam + mu * params[n:]])

    size = n if nonneg else 2 * n
    res = minimize(f, np.zeros(size), jac=True, method="L-BFGS-B", bounds=[(0, None)] * size,
                   options=dict(maxiter=20000, maxfun=40000, ftol=1e-16, gtol=1e-13))
    return float(res.fun)


@pytest.mark.parametrize(
    "nonneg, mu, mode, stride",
    [(True, 0.0, "zeros", 1), (False, 0.0, "zeros", 1), (True, 0.1, "reflect", 1), (True, 0.0, "circular", 2),
     (False, 0.05, "replicate", 2)],
)
def test_fista_matches_dense_reference_solve(gen, nonneg, mu, mode, stride):
    geom, w, x, step = _problem(gen, mode=mode, stride=stride)
    lam = 0.2
    z, _ = solve_lasso(x, w, geom, lam, 0.9 * step, 3000, nonneg=nonneg, mu=mu)
    ours = lasso_terms(x, z, geom, w, lam, mu).objective
    matrix = dense_matrix(geom, w, x.shape[2:])
    for i in range(x.shape[0]):
        ref = _reference_solve(matrix, x[i], lam, mu, nonneg)
        assert abs(float(ours[i]) - ref) <= 1e-4 * abs(ref), (float(ours[i]), ref)
    if nonneg:
        assert float(z.min()) >= 0


@pytest.mark.parametrize("nonneg", [True, False])
def test_ista_objective_never_increases(gen, nonneg):
    geom, w, x, step = _problem(gen, stride=2, size=(9, 8))
    _, trace = solve_lasso(x, w, geom, 0.1, 0.9 * step, 60, nonneg=nonneg, method="ista", trace=True)
    diffs = trace.objective[1:] - trace.objective[:-1]
    assert float(diffs.max()) <= 1e-12
    assert float(trace.objective[-1].sum()) < float(trace.objective[0].sum())


def test_fista_converges_faster_than_ista(gen):
    geom, w, x, step = _problem(gen)
    runs = {m: solve_lasso(x, w, geom, 0.05, 0.9 * step, 40, method=m, trace=True)[1].objective[-1].sum()
            for m in ("ista", "fista")}
    best = solve_lasso(x, w, geom, 0.05, 0.9 * step, 4000)[0]
    opt = float(lasso_terms(x, best, geom, w, 0.05).objective.sum())
    assert float(runs["fista"]) - opt < 0.5 * (float(runs["ista"]) - opt)


def test_methods_agree_up_to_two_steps_and_differ_after(gen):
    geom, w, x, step = _problem(gen)
    for k in (1, 2):
        zs = [solve_lasso(x, w, geom, 0.1, step, k, method=m)[0] for m in ("fista", "ista", "heavy_ball")]
        assert torch.equal(zs[0], zs[1]) and torch.equal(zs[0], zs[2])
    z3 = {m: solve_lasso(x, w, geom, 0.1, step, 3, method=m)[0] for m in ("fista", "ista", "heavy_ball")}
    assert not torch.allclose(z3["fista"], z3["ista"])
    assert not torch.allclose(z3["fista"], z3["heavy_ball"])


def test_heavy_ball_takes_the_gradient_at_the_iterate(gen):
    """Three steps written out by hand: the authors' variant extrapolates, but evaluates the
    gradient at z_2, not at the extrapolated point."""
    geom, w, x, step = _problem(gen)
    lam, t = 0.1, step
    size = x.shape[2:]

    def grad_step(at):
        return t * geom.analysis(x - geom.synthesis(at, w, size), w)

    relu = torch.relu
    z1 = relu(t * geom.analysis(x, w) - lam * t)
    z2 = relu(z1 + grad_step(z1) - lam * t)
    beta = fista_momentum(3)[2]
    y = z2 + beta * (z2 - z1)
    heavy = relu(y + grad_step(z2) - lam * t)
    fista = relu(y + grad_step(y) - lam * t)
    torch.testing.assert_close(solve_lasso(x, w, geom, lam, t, 3, method="heavy_ball")[0], heavy)
    torch.testing.assert_close(solve_lasso(x, w, geom, lam, t, 3, method="fista")[0], fista)
    assert abs(beta - (1.618033988749895 - 1) / 2.193527085331054) < 1e-12


def test_trace_reports_each_step(gen):
    geom, w, x, step = _problem(gen)
    z, trace = solve_lasso(x, w, geom, 0.1, step, 5, trace=True)
    assert trace.objective.shape == (5, 2)
    final = lasso_terms(x, z, geom, w, 0.1)
    torch.testing.assert_close(trace.objective[-1], final.objective)
    torch.testing.assert_close(trace.data[-1] + trace.l1[-1], trace.objective[-1])
    torch.testing.assert_close(trace.nonzero[-1], (z != 0).double().flatten(1).mean(dim=1))
    assert torch.all(trace.rel_change[0] == 1.0)  # from zero, the first step changes everything
    assert float(trace.rel_change[-1].max()) < float(trace.rel_change[1].max())
    z_plain, none = solve_lasso(x, w, geom, 0.1, step, 5)
    assert none is None and torch.equal(z, z_plain)


def test_per_sample_lam(gen):
    geom, w, x, step = _problem(gen)
    lam = torch.tensor([0.05, 0.5], dtype=torch.float64)
    z, _ = solve_lasso(x, w, geom, lam, step, 4)
    for i in range(2):
        zi, _ = solve_lasso(x[i : i + 1], w, geom, float(lam[i]), step, 4)
        torch.testing.assert_close(z[i : i + 1], zi)


def test_bad_solver_arguments(gen):
    geom, w, x, step = _problem(gen)
    with pytest.raises(ValueError, match="steps"):
        solve_lasso(x, w, geom, 0.1, step, 0)
    with pytest.raises(ValueError, match="lam"):
        solve_lasso(x, w, geom, -0.1, step, 2)
    with pytest.raises(ValueError, match="method"):
        solve_lasso(x, w, geom, 0.1, step, 2, method="admm")
    with pytest.raises(ValueError, match="lam"):
        solve_lasso(x, w, geom, torch.ones(3, dtype=torch.float64), step, 2)
