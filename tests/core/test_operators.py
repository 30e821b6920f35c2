"""A^T must be exactly nn.ConvNd, and A its exact adjoint with the input's shape, for every geometry."""

import itertools
import random

import pytest
import torch
import torch.nn as nn

from csc_cli.core import ConvGeometry, dense_matrix
from csc_cli.core.operators import normalize_atoms

MODES = ("zeros", "reflect", "replicate", "circular")


def _grid_2d():
    """A curated grid plus a seeded random sample of the full product (it is too big to run whole)."""
    cases = [
        # (cin, cout, kernel, stride, padding, dilation, groups, mode, size)
        (3, 8, 3, 1, 1, 1, 1, "zeros", (8, 8)),
        (3, 8, 7, 2, 3, 1, 1, "zeros", (16, 16)),  # ImageNet stem geometry
        (3, 8, 7, 2, 3, 1, 1, "zeros", (15, 17)),  # odd sizes
        (4, 4, 3, 1, "same", 1, 4, "zeros", (7, 6)),  # depthwise, same
        (4, 6, 2, 1, "same", 1, 2, "reflect", (6, 7)),  # even kernel, asymmetric 'same'
        (4, 6, 4, 1, "same", 2, 1, "circular", (9, 8)),  # even kernel, dilated, asymmetric 'same'
        (2, 4, (3, 1), (2, 1), (1, 0), 1, 1, "replicate", (9, 5)),
        (2, 4, 1, 2, 0, 1, 1, "zeros", (8, 9)),  # 1x1 stride-2 projection shortcut
        (2, 4, 3, 3, 0, 1, 1, "zeros", (10, 11)),  # stride > what the kernel covers cleanly
        (2, 4, 3, 1, "valid", 1, 1, "zeros", (6, 6)),
        (2, 4, 3, 1, 4, 1, 1, "zeros", (5, 5)),  # padding wider than the kernel
        (2, 4, 3, 2, 2, 2, 1, "reflect", (9, 10)),
        (6, 6, 3, 2, 1, 1, 3, "circular", (7, 8)),
    ]
    rng = random.Random(7)
    product = list(
        itertools.product(
            [1, 2, 3, 5, (3, 2)],  # kernel
            [1, 2, (2, 1), 3],  # stride
            [0, 1, 2, (1, 0), "same", "valid"],  # padding
            [1, 2],  # dilation
            [1, 2],  # groups
            MODES,
            [(7, 7), (8, 8), (6, 9)],  # odd, even, mixed
        )
    )
    for kernel, stride, padding, dilation, groups, mode, size in rng.sample(product, 140):
        cases.append((2 * groups, 3 * groups, kernel, stride, padding, dilation, groups, mode, size))
    return cases


def _grid_1d():
    cases = []
    for kernel, stride, padding, dilation, groups, mode, length in itertools.product(
        [1, 2, 3, 4], [1, 2, 3], [0, 1, 3, "same"], [1, 2], [1, 2], MODES, [9, 10]
    ):
        cases.append((2 * groups, 2 * groups, kernel, stride, padding, dilation, groups, mode, (length,)))
    return random.Random(11).sample(cases, 100)


def _conv(dim, cin, cout, kernel, stride, padding, dilation, groups, mode):
    cls = nn.Conv1d if dim == 1 else nn.Conv2d
    return cls(cin, cout, kernel, stride, padding, dilation, groups, bias=False, padding_mode=mode, dtype=torch.float64)


def _check_case(dim, case, gen):
    cin, cout, kernel, stride, padding, dilation, groups, mode, size = case
    try:
        conv = _conv(dim, cin, cout, kernel, stride, padding, dilation, groups, mode)
    except (ValueError, RuntimeError):
        # nn.ConvNd refuses it (e.g. 'same' with stride > 1): so must we, with a ValueError.
        with pytest.raises(ValueError):
            ConvGeometry.create(dim, cin, cout, kernel, stride, padding, dilation, groups, mode)
        return "refused"
    geom = ConvGeometry.create(dim, cin, cout, kernel, stride, padding, dilation, groups, mode)
    x = torch.randn((2, cin, *size), generator=gen, dtype=torch.float64, requires_grad=True)
    try:
        expected = conv(x)
    except RuntimeError:
        # input too small for this kernel or padding: we must say so with a ValueError
        with pytest.raises(ValueError):
            geom.output_size(size)
        return "too small"
    weight = conv.weight.detach()
    code = geom.analysis(x, weight)
    # A^T is exactly nn.ConvNd: same shape, same values
    assert code.shape == expected.shape
    assert geom.output_size(size) == tuple(expected.shape[2:])
    torch.testing.assert_close(code, expected, rtol=1e-12, atol=1e-12)
    # A is the exact adjoint: <A z, x> = <z, A^T x>, with A z shaped like x
    z = torch.randn(code.shape, generator=gen, dtype=torch.float64)
    back = geom.synthesis(z, weight, size)
    assert back.shape == x.shape
    lhs = (back * x.detach()).sum()
    rhs = (z * code.detach()).sum()
    assert abs(float(lhs - rhs)) <= 1e-10 * max(abs(float(lhs)), abs(float(rhs)), 1.0)
    # and, entry by entry, the vector-Jacobian product of nn.ConvNd (an independent adjoint)
    (vjp,) = torch.autograd.grad(expected, x, z)
    torch.testing.assert_close(back, vjp, rtol=1e-11, atol=1e-11)
    return "ok"


@pytest.mark.parametrize("case", _grid_2d(), ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
def test_adjoint_and_shape_parity_2d(case, gen):
    _check_case(2, case, gen)


@pytest.mark.parametrize("case", _grid_1d(), ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
def test_adjoint_and_shape_parity_1d(case, gen):
    _check_case(1, case, gen)


def test_grid_exercises_every_mode_and_mostly_valid_cases(gen):
    """The random grid must not be mostly refusals: count what each case did."""
    outcomes = [_check_case(2, c, gen) for c in _grid_2d()[:60]]
    assert outcomes.count("ok") >= 40
    assert {c[7] for c in _grid_2d()} == set(MODES)


@pytest.mark.parametrize("mode", MODES)
def test_pad_adjoint_is_exact(mode, gen):
    geom = ConvGeometry.create(2, 1, 1, 5, padding=(2, 3), padding_mode=mode)
    x = torch.randn(1, 1, 6, 7, generator=gen, dtype=torch.float64)
    padded = geom.pad(x)
    p = torch.randn(padded.shape, generator=gen, dtype=torch.float64)
    lhs = (geom.pad_adjoint(p) * x).sum()
    rhs = (p * padded).sum()
    assert abs(float(lhs - rhs)) < 1e-12 * abs(float(rhs))


def test_input_size_range_inverts_output_size():
    geom = ConvGeometry.create(2, 1, 1, 3, stride=2, padding=1)
    lo, hi = geom.input_size_range((16, 16))[0]
    assert (lo, hi) == (31, 32)
    assert geom.output_size((lo, lo)) == (16, 16) and geom.output_size((hi, hi)) == (16, 16)
    assert geom.output_size((hi + 1, hi + 1)) == (17, 17)


def test_dense_matrix_matches_operator(gen):
    geom = ConvGeometry.create(2, 2, 3, 3, stride=2, padding=1, padding_mode="reflect")
    w = torch.randn(geom.weight_shape, generator=gen, dtype=torch.float64)
    x = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64)
    m = dense_matrix(geom, w, (5, 6))
    torch.testing.assert_close(m @ x.flatten(), geom.analysis(x, w).flatten())


def test_normalize_atoms_unit_norm(gen):
    w = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64) * 7
    norms = normalize_atoms(w).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(padding=-1), "padding"),
        (dict(groups=2, in_channels=3), "in_channels"),
        (dict(groups=2, in_channels=4, out_channels=3), "out_channels"),
        (dict(padding="same", stride=2), "padding='same'"),
        (dict(padding="full"), "padding"),
        (dict(padding_mode="mirror"), "padding_mode"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(stride=0), "stride"),
        (dict(dilation=0), "dilation"),
        (dict(kernel_size=(3, 3, 3)), "kernel_size"),
    ],
)
def test_bad_geometry_names_the_argument(kwargs, name):
    args = dict(dim=2, in_channels=4, out_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name.replace("(", r"\(")):
        ConvGeometry.create(**args)


def test_inputs_too_small_are_refused():
    geom = ConvGeometry.create(2, 1, 1, 5)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        geom.output_size((3, 8))
    reflect = ConvGeometry.create(2, 1, 1, 5, padding=3, padding_mode="reflect")
    with pytest.raises(ValueError, match="reflect padding"):
        reflect.output_size((3, 8))
    with pytest.raises(ValueError, match="does not come from an input"):
        geom.synthesis(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 5, 5), (9, 9))
