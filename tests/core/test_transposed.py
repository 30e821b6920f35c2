"""Sparse deconvolution: CSCConvTranspose1d/2d against nn.ConvTranspose, closed forms, the exact
operator norm, an independent dense Lasso solve, gradcheck, memory, bad input and the card round trip.

The dictionary ``B`` (code -> input) is the strided conv that is the transposed conv's adjoint;
``B^T`` (input -> code) is exactly ``nn.ConvTranspose``. Every reference here is computed without
csc_cli's geometry: from ``torch.nn.functional`` on one-hot inputs, by autograd (the vector-Jacobian
product of ``nn.ConvTranspose`` is its adjoint), or by scipy.
"""

import copy
import io
import itertools
import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import minimize

from csc_cli import CSCConvTranspose1d, CSCConvTranspose2d
from csc_cli.core import TransposedConvGeometry, lasso_terms

_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d}
_CONV = {1: F.conv1d, 2: F.conv2d}


def _x(*shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def unit_atoms(weight, groups):
    """Written out atom by atom: code channel o = g * (C_out/groups) + m has the atom
    W[g*C_in/groups : (g+1)*C_in/groups, m], divided by its l2 norm."""
    cin, cout_g = weight.shape[:2]
    out = weight.clone()
    block = cin // groups
    for g in range(groups):
        for m in range(cout_g):
            rows = slice(g * block, (g + 1) * block)
            out[rows, m] = weight[rows, m] / weight[rows, m].norm()
    return out


def dense_analysis(dim, weight, size, stride, padding, output_padding, groups, dilation):
    """B^T as a dense (n_code, n_input) matrix, column by column from one-hot inputs through
    torch's own conv_transpose (not csc_cli's geometry)."""
    cin = weight.shape[0]
    n = cin * int(np.prod(size))
    eye = torch.eye(n, dtype=weight.dtype).view(n, cin, *size)
    cols = _CONV_T[dim](eye, weight, None, stride, padding, output_padding, groups, dilation)
    return cols.reshape(n, -1).T.contiguous()


# ------------------------------------------------------------------ operator pair: adjoint and shapes
def _grid_2d():
    """(cin, cout, kernel, stride, padding, output_padding, dilation, groups, size): curated cases
    plus a seeded sample of the full product."""
    cases = [
        (4, 2, 4, 2, 1, 0, 1, 1, (8, 8)),  # the usual x2 up-sampling
        (4, 2, 3, 2, 1, 1, 1, 1, (7, 8)),  # odd kernel, output padding, odd/even sizes
        (6, 6, 3, 2, 1, 1, 1, 6, (5, 6)),  # depthwise
        (4, 6, 3, 2, 0, 1, 1, 2, (4, 5)),  # grouped
        (2, 3, 3, 1, 1, 1, 2, 1, (5, 5)),  # output_padding >= stride (dilation 2): B crops
        (2, 3, 3, 2, 2, 2, 3, 1, (4, 6)),  # output_padding = stride < dilation
        (2, 3, (3, 1), (2, 1), (1, 0), (1, 0), 1, 1, (6, 5)),
        (2, 3, 1, 3, 0, 2, 1, 1, (4, 4)),  # 1x1, stride larger than the kernel
        (2, 2, 5, 1, 4, 0, 1, 1, (6, 6)),  # padding larger than half the kernel
        (3, 2, 2, 2, 0, 1, 1, 1, (3, 7)),
    ]
    rng = random.Random(13)
    product = list(
        itertools.product(
            [1, 2, 3, 4, (3, 2)],  # kernel
            [1, 2, (2, 1), 3],  # stride
            [0, 1, 2],  # padding
            [0, 1, 2],  # output padding
            [1, 2, 3],  # dilation
            [1, 2],  # groups
            [(5, 5), (6, 6), (4, 7)],  # odd, even, mixed
        )
    )
    for kernel, stride, padding, out_pad, dilation, groups, size in rng.sample(product, 120):
        cases.append((2 * groups, 3 * groups, kernel, stride, padding, out_pad, dilation, groups, size))
    return cases


def _grid_1d():
    cases = list(itertools.product([1, 3, 4], [1, 2, 3], [0, 1, 2], [0, 1, 2], [1, 2], [1, 2], [6, 7]))
    return [(2 * g, 2 * g, k, s, p, op, d, g, (n,)) for k, s, p, op, d, g, n in random.Random(17).sample(cases, 80)]


def _check_case(dim, case, gen):
    cin, cout, kernel, stride, padding, out_pad, dilation, groups, size = case
    cls = nn.ConvTranspose1d if dim == 1 else nn.ConvTranspose2d
    conv = cls(cin, cout, kernel, stride, padding, out_pad, groups, False, dilation, dtype=torch.float64)
    x = torch.randn((2, cin, *size), generator=gen, dtype=torch.float64, requires_grad=True)
    try:
        expected = conv(x)
    except RuntimeError:
        # nn.ConvTranspose refuses it (output padding too large, empty output): so must we
        with pytest.raises(ValueError):
            TransposedConvGeometry.create(dim, cin, cout, kernel, stride, padding, out_pad, groups,
                                          dilation).output_size(size)
        return "refused"
    geom = TransposedConvGeometry.create(dim, cin, cout, kernel, stride, padding, out_pad, groups, dilation)
    weight = conv.weight.detach()
    assert geom.weight_shape == tuple(weight.shape)
    code = geom.analysis(x, weight)
    # B^T is exactly nn.ConvTranspose: same shape, same values
    assert code.shape == expected.shape and geom.output_size(size) == tuple(expected.shape[2:])
    torch.testing.assert_close(code, expected, rtol=1e-12, atol=1e-12)
    # B is its exact adjoint: <B z, r> = <z, B^T r>, with B z shaped like the input
    z = torch.randn(code.shape, generator=gen, dtype=torch.float64)
    back = geom.synthesis(z, weight, size)
    assert back.shape == x.shape
    lhs = float((back * x.detach()).sum())
    rhs = float((z * code.detach()).sum())
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), abs(rhs), 1.0)
    # entry by entry, the vector-Jacobian product of nn.ConvTranspose (an independent adjoint)
    (vjp,) = torch.autograd.grad(expected, x, z)
    torch.testing.assert_close(back, vjp, rtol=1e-11, atol=1e-11)
    # the input size is recovered from the code size (decode's default)
    assert geom.input_size_range(code.shape[2:]) == tuple((n, n) for n in size)
    return "ok"


@pytest.mark.parametrize("case", _grid_2d(), ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
def test_adjoint_and_shape_parity_2d(case, gen):
    _check_case(2, case, gen)


@pytest.mark.parametrize("case", _grid_1d(), ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
def test_adjoint_and_shape_parity_1d(case, gen):
    _check_case(1, case, gen)


def test_grid_is_mostly_valid_cases_and_covers_the_crop(gen):
    """The random grid must not be mostly refusals, and must include output_padding >= stride."""
    def pair(v):
        return v if isinstance(v, tuple) else (v, v)

    outcomes = [_check_case(2, c, gen) for c in _grid_2d()]
    assert outcomes.count("ok") >= 80, outcomes.count("ok")
    crops = [c for c, o in zip(_grid_2d(), outcomes) if o == "ok" and any(
        op >= s for op, s in zip(pair(c[5]), pair(c[3])))]
    assert len(crops) >= 3


LAYER_CASES = [
    # (cin, cout, kernel, kwargs, size)
    (8, 4, 4, dict(stride=2, padding=1), (7, 8)),
    (8, 4, 3, dict(stride=2, padding=1, output_padding=1), (5, 6)),
    (6, 6, 3, dict(stride=2, padding=1, groups=6), (6, 5)),  # depthwise
    (4, 6, (3, 5), dict(stride=(2, 3), padding=(1, 2), dilation=(1, 2), groups=2), (5, 4)),
    (3, 5, 3, dict(stride=1, padding=1, dilation=2, output_padding=1), (6, 6)),
]


@pytest.mark.parametrize("cin, cout, kernel, kwargs, size", LAYER_CASES)
def test_layer_output_shape_parity_with_conv_transpose2d(cin, cout, kernel, kwargs, size):
    conv = nn.ConvTranspose2d(cin, cout, kernel, bias=False, **kwargs)
    layer = CSCConvTranspose2d(cin, cout, kernel, **kwargs).eval()
    assert layer.weight.shape == conv.weight.shape
    x = torch.randn(2, cin, *size)
    z = layer(x)
    assert z.shape == conv(x).shape
    assert layer.decode(z).shape == x.shape and layer.decode(z, size).shape == x.shape
    assert layer(x[0]).shape == z[0].shape  # unbatched
    # every output_size nn.ConvTranspose2d accepts, spatial or with (N, C) in front
    smallest = [s - op for s, op in zip(conv(x).shape[2:], layer.output_padding)]
    for extra in itertools.product(*(range(s) for s in layer.stride)):
        want = [lo + e for lo, e in zip(smallest, extra)]
        ref = conv(x, output_size=want)
        out = layer(x, output_size=want)
        assert out.shape == ref.shape
        assert layer(x, output_size=[2, cout, *want]).shape == ref.shape
        assert layer.decode(out, size).shape == x.shape
    # and refuses the ones it refuses, naming output_size
    too_big = [s + st for s, st in zip(smallest, layer.stride)]
    with pytest.raises(ValueError):
        conv(x, output_size=too_big)
    with pytest.raises(ValueError, match="output_size"):
        layer(x, output_size=too_big)
    with pytest.raises(ValueError, match="output_size"):
        layer(x, output_size=[1, 2, 3, 4, 5])


@pytest.mark.parametrize("length", [9, 10])
def test_layer_1d_parity(length):
    conv = nn.ConvTranspose1d(4, 3, 4, stride=2, padding=1, bias=False)
    layer = CSCConvTranspose1d(4, 3, 4, stride=2, padding=1).eval()
    x = torch.randn(3, 4, length)
    z = layer(x)
    assert z.shape == conv(x).shape
    assert layer(x, output_size=[2 * length + 1]).shape == conv(x, output_size=[2 * length + 1]).shape
    assert layer.decode(z).shape == x.shape
    assert layer(x[0]).shape == z[0].shape


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_atoms_are_the_unit_norm_columns_of_b(groups, gen):
    layer = CSCConvTranspose2d(4, 8, 3, groups=groups, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64) * 3)
    torch.testing.assert_close(layer.atoms, unit_atoms(layer.weight.detach(), groups), rtol=1e-14, atol=1e-14)
    # a column of the dense B for a code entry whose atom lies inside the input is the unit atom
    geom = layer.geometry
    matrix = dense_analysis(2, layer.atoms.detach(), (5, 5), 1, 0, 0, groups, 1)  # (8*7*7, 4*5*5)
    per_channel = matrix.view(8, 7 * 7, -1)[:, 3 * 7 + 3]  # the centre code position of each channel
    torch.testing.assert_close(per_channel.norm(dim=1), torch.ones(8, dtype=torch.float64))
    assert geom.normalize_atoms(layer.weight).shape == layer.weight.shape


# ------------------------------------------------------------------ the formulas
def test_one_step_is_conv_transpose_plus_fixed_bias_plus_relu():
    torch.manual_seed(0)
    layer = CSCConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2, steps=1, lam=0.2,
                               dtype=torch.float64).eval()
    x = _x(3, 6, 5, 7)
    t = layer.step_size_for((5, 7))
    w_unit = unit_atoms(layer.weight.detach(), 2)
    expected = torch.relu(t * F.conv_transpose2d(x, w_unit, None, 2, 1, 1, 2) - 0.2 * t)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1, output_padding=1),
                                    dict(stride=1, padding=1, dilation=2, output_padding=1)])
def test_two_steps_are_the_two_step_fista_formula(kwargs):
    """z1 = relu(t B^T x - lam t); z2 = relu(z1 + t B^T (x - B z1) - lam t), B z = conv2d(z, W_unit)
    (cropped to the input when output_padding >= stride, the second case)."""
    torch.manual_seed(0)
    layer = CSCConvTranspose2d(3, 5, 3, steps=2, lam=0.1, dtype=torch.float64, **kwargs).eval()
    x = _x(2, 3, 6, 5)
    t = layer.step_size_for((6, 5))
    w = unit_atoms(layer.weight.detach(), 1)
    s, p, d, op = kwargs["stride"], kwargs["padding"], kwargs.get("dilation", 1), kwargs["output_padding"]

    def bt(r):
        return F.conv_transpose2d(r, w, None, s, p, op, 1, d)

    def b(z):
        return F.conv2d(z, w, None, s, p, d)[:, :, :6, :5]

    z1 = torch.relu(t * bt(x) - 0.1 * t)
    z2 = torch.relu(z1 + t * bt(x - b(z1)) - 0.1 * t)
    torch.testing.assert_close(layer(x), z2, rtol=1e-12, atol=1e-12)
    assert layer.decode(z2).shape == x.shape
    torch.testing.assert_close(layer.decode(z2), b(z2), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ step size
def exact_lipschitz(layer, size, output_padding=None):
    """||B||^2 = the squared largest singular value of the dense matrix (float64 SVD)."""
    op = layer.output_padding if output_padding is None else output_padding
    m = dense_analysis(2, layer.atoms.detach().double(), size, layer.stride, layer.padding, op, layer.groups,
                       layer.dilation)
    return float(torch.linalg.matrix_norm(m, ord=2)) ** 2


STEP_CASES = [
    (4, 3, 4, dict(stride=2, padding=1)),
    (4, 4, 3, dict(stride=2, padding=1, output_padding=1, groups=4)),
    (3, 6, 3, dict(stride=1, padding=1)),
    (2, 3, 3, dict(stride=1, padding=1, dilation=2, output_padding=1)),
    (4, 2, 2, dict(stride=2)),
]


@pytest.mark.parametrize("cin, cout, k, kwargs", STEP_CASES, ids=str)
def test_step_size_against_the_exact_norm(cin, cout, k, kwargs):
    torch.manual_seed(3)
    layer = CSCConvTranspose2d(cin, cout, k, dtype=torch.float64, **kwargs).train()
    layer(torch.randn(2, cin, 6, 6, dtype=torch.float64))  # the size in use
    product = float(layer.step_size) * exact_lipschitz(layer, (6, 6))
    assert 0.7 <= product <= 1.0, product
    layer.eval()
    for size in [(3, 3), (4, 7), (6, 6), (9, 8)]:
        product = float(layer.step_size_for(size)) * exact_lipschitz(layer, size)
        assert 0.7 <= product <= 1.0, (size, product)


@pytest.mark.parametrize("cin, cout, k, kwargs", STEP_CASES, ids=str)
def test_core_norm_tools_serve_the_transposed_geometry(cin, cout, k, kwargs, gen):
    """power_iteration, lipschitz_upper_bound and dense_matrix take the transposed geometry as is."""
    from csc_cli.core import dense_matrix, lipschitz_upper_bound, power_iteration

    args = dict(stride=1, padding=0, output_padding=0, groups=1, dilation=1)
    args.update(kwargs)
    geom = TransposedConvGeometry.create(2, cin, cout, k, args["stride"], args["padding"], args["output_padding"],
                                         args["groups"], args["dilation"])
    atoms = geom.normalize_atoms(torch.randn(geom.weight_shape, generator=gen, dtype=torch.float64))
    size = (5, 4)
    reference = dense_analysis(2, atoms, size, geom.stride, geom.padding, geom.output_padding, geom.groups,
                               geom.dilation)
    torch.testing.assert_close(dense_matrix(geom, atoms, size), reference, rtol=1e-14, atol=1e-14)
    exact = float(torch.linalg.matrix_norm(reference, ord=2)) ** 2
    est, _, _ = power_iteration(geom, atoms, size)
    assert 0.98 * exact <= float(est) <= exact * (1 + 1e-9), (float(est), exact)
    assert float(lipschitz_upper_bound(geom, atoms, size)) >= exact * (1 - 1e-9)


def test_dtypes_layouts_and_backward_modes():
    torch.manual_seed(0)
    layer = CSCConvTranspose2d(8, 4, 4, stride=2, padding=1).eval()
    x = torch.randn(2, 8, 6, 7)
    reference = copy.deepcopy(layer).double()(x.double())
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        z = copy.deepcopy(layer).to(dtype)(x.to(dtype))
        assert z.dtype == dtype
        assert float((z.double() - reference).norm().detach() / reference.norm().detach()) < tol
    channels_last = copy.deepcopy(layer).to(memory_format=torch.channels_last)
    torch.testing.assert_close(channels_last(x.to(memory_format=torch.channels_last)), layer(x), rtol=1e-5,
                               atol=1e-5)
    # recompute gives the unrolled gradients, with an output_size that changes the operator
    grads = []
    for mode in ("unrolled", "recompute"):
        torch.manual_seed(0)
        m = CSCConvTranspose2d(8, 4, 4, stride=2, padding=1, steps=3, backward=mode, dtype=torch.float64).eval()
        xx = x.double().requires_grad_(True)
        grads.append(torch.autograd.grad(m(xx, output_size=(13, 15)).sum(), (xx, m.weight)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_output_size_changes_the_operator_and_its_step_is_keyed_by_it():
    """forward(x, output_size) with another output padding is another operator (one more row and
    column of code): its step is estimated for it, stored with the output padding, and reloaded."""
    torch.manual_seed(0)
    layer = CSCConvTranspose2d(2, 2, 3, stride=2, padding=1, dtype=torch.float64).train()
    x = _x(2, 2, 3, 3)
    layer(x)  # output 5x5, output padding 0
    l0 = float(layer.lipschitz)
    assert layer.lipschitz_size.tolist() == [[3, 3], [0, 0]]
    layer(x, output_size=(6, 6))  # output padding 1: a new estimate, recorded as such
    l1 = float(layer.lipschitz)
    assert layer.lipschitz_size.tolist() == [[3, 3], [1, 1]] and layer.trained_size == (3, 3)
    exact0, exact1 = exact_lipschitz(layer, (3, 3), (0, 0)), exact_lipschitz(layer, (3, 3), (1, 1))
    assert exact1 > 1.1 * exact0  # it is a different operator (measured: 1.128x)
    # power iteration gives Rayleigh quotients (lower bounds), converged well within the margin;
    # l1 above exact0 cannot be an estimate of the output-padding-0 operator
    assert 0.98 * exact0 <= l0 <= exact0 * (1 + 1e-9)
    assert 0.98 * exact1 <= l1 <= exact1 * (1 + 1e-9) and l1 > 1.05 * exact0
    layer.eval()
    assert 0.7 <= float(layer.step_size_for((3, 3))) * exact0 <= 1.0  # the default operator: its own step
    assert 0.7 <= float(layer.step_size_for((3, 3), output_size=(6, 6))) * exact1 <= 1.0
    # the stored state (with its output padding) survives a state-dict round trip
    expected = layer(x, output_size=(6, 6))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    fresh = CSCConvTranspose2d(2, 2, 3, stride=2, padding=1, dtype=torch.float64).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh.step_size, layer.step_size)
    assert torch.equal(fresh(x, output_size=(6, 6)), expected)
    # and the warm state of the training refresh round-trips too
    twin = copy.deepcopy(fresh)
    layer.train()
    layer(x, output_size=(6, 6))
    state = layer.warm_state()
    assert state["size"].tolist() == [[3, 3], [1, 1]]
    twin.load_warm_state(state)
    assert twin.trained_size == (3, 3)
    with pytest.raises(ValueError, match="warm state"):
        twin.load_warm_state({**state, "size": torch.tensor([3, 3])})


def test_eval_forward_with_output_size_is_pure():
    torch.manual_seed(0)
    layer = CSCConvTranspose2d(4, 4, 4, stride=2, padding=1, steps=3).train()
    layer(torch.randn(2, 4, 8, 8))
    layer.eval()
    before = copy.deepcopy(layer.state_dict())
    x = torch.randn(3, 4, 8, 8)
    full = layer(x)
    layer(x, output_size=(17, 17))
    layer(torch.randn(1, 4, 5, 6))
    after = layer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(layer(x[:1]), full[:1], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ against an independent solver
def _reference_objective(matrix, x, lam):
    """Non-negative Lasso on the dense float64 matrix by scipy's L-BFGS-B with bounds."""
    a = matrix.T.numpy()  # B: (n_input, n_code)
    b = x.flatten().numpy()

    def f(z):
        r = a @ z - b
        return 0.5 * r @ r + lam * z.sum(), a.T @ r + lam

    res = minimize(f, np.zeros(a.shape[1]), jac=True, method="L-BFGS-B", bounds=[(0, None)] * a.shape[1],
                   options=dict(maxiter=20000, maxfun=40000, ftol=1e-16, gtol=1e-13))
    return float(res.fun)


@pytest.mark.parametrize("kwargs", [dict(stride=2, padding=1, output_padding=1), dict(stride=1, padding=0, groups=2)])
def test_many_steps_reach_the_dense_reference_optimum(kwargs):
    torch.manual_seed(0)
    layer = CSCConvTranspose2d(4, 4, 3, steps=3000, lam=0.2, dtype=torch.float64, **kwargs).eval()
    x = _x(2, 4, 4, 4, seed=3)
    z, _ = layer.solve(x)
    ours = lasso_terms(x, z, layer.geometry, layer.atoms, 0.2).objective.detach()
    matrix = dense_analysis(2, unit_atoms(layer.weight.detach(), layer.groups), (4, 4), layer.stride, layer.padding,
                            layer.output_padding, layer.groups, layer.dilation)
    for i in range(2):
        ref = _reference_objective(matrix, x[i], 0.2)
        assert abs(float(ours[i]) - ref) <= 1e-4 * abs(ref), (float(ours[i]), ref)
    assert float(z.min().detach()) >= 0 and bool((z > 0).any())


# ------------------------------------------------------------------ gradients
def _functional(layer):
    def f(x, w):
        return torch.func.functional_call(layer, {"weight": w}, (x,))

    return f


def test_gradcheck_unrolled():
    torch.manual_seed(0)
    layer = CSCConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1, steps=3, lam=0.05,
                               dtype=torch.float64)
    x = _x(2, 2, 3, 3, seed=5).requires_grad_(True)
    layer.refresh_step_size((3, 3))
    layer.eval()  # the stored step: a constant, as in training
    w = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(_functional(layer), (x, w), eps=1e-6, atol=1e-7)


def test_gradcheck_implicit_at_convergence():
    torch.manual_seed(0)
    layer = CSCConvTranspose2d(2, 3, 3, stride=2, padding=1, steps=2500, lam=0.5, backward="implicit",
                               cg_iters=2000, cg_tol=1e-14, dtype=torch.float64)
    x = _x(2, 2, 3, 3, seed=5).requires_grad_(True)
    layer.refresh_step_size((3, 3))
    layer.eval()
    z, trace = layer.solve(x.detach(), trace=True)
    assert float(trace.rel_change[-1].max()) < 1e-13  # converged, so implicit gradients are exact
    assert bool((z > 0).any())
    w = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(_functional(layer), (x, w), eps=1e-6, atol=1e-7, fast_mode=True)


def test_unrolled_and_implicit_agree_at_convergence():
    # 16 inputs x 4 code channels on a 2x grid: 4x overcomplete, so FISTA needs a large lam (a small
    # support) to converge in a test's time (lam = 0.5: a relative change of 2e-6 after 1000 steps)
    x = _x(2, 3, 4, 4, seed=9).requires_grad_(True)
    target = _x(2, 4, 8, 8, seed=10)
    grads = {}
    for mode in ("unrolled", "implicit"):
        torch.manual_seed(0)
        layer = CSCConvTranspose2d(3, 4, 4, stride=2, padding=1, steps=2000, lam=1.0, backward=mode,
                                   cg_tol=1e-12, cg_iters=1000, dtype=torch.float64)
        layer.refresh_step_size((4, 4))
        layer.eval()
        _, trace = layer.solve(x.detach(), trace=True)
        assert float(trace.rel_change[-1].max()) < 1e-13
        grads[mode] = torch.autograd.grad((layer(x) * target).sum(), (x, layer.weight))
    for a, b in zip(grads["unrolled"], grads["implicit"]):
        assert float((a - b).norm() / b.norm()) < 1e-6


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="CPU peak memory needs Linux /proc")
def test_implicit_peak_memory_is_flat_in_k():
    """As tests/test_memory.py for CSCConv2d: one training step measured in a fresh interpreter."""
    from csc_cli import profiling

    def peak(backward, steps):
        result = profiling.isolated("layer_train_step_memory", backward=backward, steps=steps, batch=8, size=48,
                                    transposed=True)
        return result["peak_bytes"], result["code_bytes"]

    k2, code = peak("implicit", 2)
    k20, _ = peak("implicit", 20)
    # measured here: 26.0 MiB vs 26.0 MiB (one code tensor is 2.25 MiB); unrolled 15.8 vs 107 MiB
    assert k20 <= 1.3 * k2, (k2, k20)
    assert k2 > code  # the measurement sees at least the code itself
    u2, _ = peak("unrolled", 2)
    u20, _ = peak("unrolled", 20)
    assert u20 > 3 * u2, (u2, u20)  # the control: the same measurement sees unrolled autograd grow


# ------------------------------------------------------------------ construction and bad input
def test_from_conv_copies_geometry_weight_and_bias():
    conv = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, bias=True).double()
    layer = CSCConvTranspose2d.from_conv(conv, lam=0.0, steps=1).eval()
    assert (layer.kernel_size, layer.stride, layer.padding, layer.output_padding, layer.groups) == \
        ((3, 3), (2, 2), (1, 1), (1, 1), 2)
    assert torch.equal(layer.weight, conv.weight) and torch.equal(layer.bias, conv.bias)
    x = _x(2, 4, 5, 5)
    t = layer.step_size_for((5, 5))
    plain = conv(x) - conv.bias.view(-1, 1, 1)
    norms = torch.linalg.vector_norm(conv.weight.view(2, 2, 3, 9), dim=(1, 3)).reshape(6)
    expected = torch.relu(t * plain / norms.view(-1, 1, 1)) + conv.bias.view(-1, 1, 1)
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(ValueError, match="ConvTranspose2d"):
        CSCConvTranspose2d.from_conv(nn.Conv2d(1, 1, 3))
    with pytest.raises(ValueError, match="ConvTranspose1d"):
        CSCConvTranspose1d.from_conv(nn.ConvTranspose2d(1, 1, 3))


def test_extra_repr_and_record():
    layer = CSCConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, lam=0.25, steps=3)
    text = repr(layer)
    for piece in ("CSCConvTranspose2d(8, 4, kernel_size=(3, 3)", "stride=(2, 2)", "output_padding=(1, 1)",
                  "lam=0.25", "steps=3"):
        assert piece in text
    record = layer.geometry_record()
    assert record["output_padding"] == [1, 1] and record["padding"] == [1, 1]
    again = CSCConvTranspose2d.from_record(record, layer.csc_options())
    assert again.geometry == layer.geometry and again.csc_options() == layer.csc_options()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lam=-0.1), "lam"),
        (dict(steps=0), "steps"),
        (dict(padding_mode="reflect"), "padding_mode"),
        (dict(output_padding=2, stride=2), "output_padding"),
        (dict(output_padding=1), "output_padding"),  # stride 1, dilation 1
        (dict(output_padding=(0, 1, 0)), "output_padding"),
        (dict(groups=2), "in_channels"),
        (dict(groups=3, in_channels=6), "out_channels"),
        (dict(padding="same"), "padding"),
        (dict(padding=-1), "padding"),
        (dict(method="admm"), "method"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, name):
    args = dict(in_channels=3, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        CSCConvTranspose2d(**args)


def test_bad_inputs_are_refused_with_a_clear_message():
    layer = CSCConvTranspose2d(3, 4, 5, padding=4)
    with pytest.raises(ValueError, match="in_channels"):
        layer(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="empty output"):
        layer(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="4-D"):
        layer(torch.randn(3, 8))
    with pytest.raises(ValueError, match="out_channels"):
        layer.decode(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="lam"):
        layer.lam = -1


# ------------------------------------------------------------------ the surgery and the card
def test_to_csc_edit_and_new_csc_record_rebuild_the_same_layer():
    """No timm model file is needed for this: apply_edit of a to_csc Edit on a ConvTranspose2d, the
    edit's dict round trip through the card validator, and new_csc from the layer's geometry
    record rebuild a layer with identical output after load_state_dict."""
    from csc_cli.card import CardError, Edit, check_geometry
    from csc_cli.surgery import apply_edit, conv_kind, to_csc_edit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.ConvTranspose2d(8, 3, 3, stride=2, padding=1, output_padding=1)).double()
    assert conv_kind(model[2]) == "conv_t"
    edit = to_csc_edit(model[2], "2", lam=0.15, steps=3)
    assert edit.layer == "CSCConvTranspose2d" and edit.geometry["output_padding"] == [1, 1]
    edit = Edit.from_dict(edit.to_dict())  # what a model file holds, validated
    layer = apply_edit(model, edit)
    assert model[2] is layer and isinstance(layer, CSCConvTranspose2d)
    x = _x(2, 3, 9, 10)
    model.train()
    model(x)  # a training forward: the step size is stored
    model.eval()
    expected = model(x)
    assert expected.shape == (2, 3, 10, 10)

    rebuilt = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Identity()).double()
    new = Edit.from_dict(Edit("new_csc", "2", [], "CSCConvTranspose2d", layer.geometry_record(),
                              layer.csc_options()).to_dict())
    apply_edit(rebuilt, new)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    assert torch.equal(rebuilt(x), expected)

    # the card: a transposed layer's geometry needs output_padding; a conv's must not have it
    record = layer.geometry_record()
    check_geometry(record, "test", transposed=True)
    with pytest.raises(CardError):
        check_geometry(record, "test")
    with pytest.raises(CardError):
        check_geometry({k: v for k, v in record.items() if k != "output_padding"}, "test", transposed=True)
    with pytest.raises(CardError):
        check_geometry({**record, "padding": "same"}, "test", transposed=True)
    with pytest.raises(ValueError, match="does not become"):
        apply_edit(nn.Sequential(nn.ConvTranspose2d(8, 3, 3)), Edit("to_csc", "0", [], "CSCConv2d", None, {}))
