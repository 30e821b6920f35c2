"""CSCConv1d / CSCConv2d: the paper's formulas, drop-in parity with nn.ConvNd, gradients, purity."""

import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from csc_cli import CSCConv1d, CSCConv2d
from csc_cli.core import lasso_terms


def _layer(*args, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    return CSCConv2d(*args, dtype=dtype, **kwargs)


def _x(*shape, dtype=torch.float64, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------ the paper's formulas
def test_one_step_is_conv_plus_fixed_bias_plus_relu():
    layer = _layer(3, 8, 3, padding=1, steps=1, lam=0.2).eval()
    x = _x(4, 3, 9, 9)
    t = layer.step_size_for((9, 9))
    d = layer.weight / layer.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = torch.relu(F.conv2d(x, t * d, padding=1) - 0.2 * t)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_two_steps_are_the_two_step_formula():
    """PAPER.md: z1 = relu(t A^T x - lam t); z2 = relu(z1 + t A^T (x - A z1) - lam t)."""
    layer = _layer(3, 8, 3, stride=2, padding=1, steps=2, lam=0.1).eval()
    x = _x(2, 3, 10, 10)
    t = layer.step_size_for((10, 10))
    d = layer.atoms
    z1 = torch.relu(t * F.conv2d(x, d, stride=2, padding=1) - 0.1 * t)
    a_z1 = F.conv_transpose2d(z1, d, stride=2, padding=1, output_padding=1)
    z2 = torch.relu(z1 + t * F.conv2d(x - a_z1, d, stride=2, padding=1) - 0.1 * t)
    torch.testing.assert_close(layer(x), z2, rtol=1e-12, atol=1e-12)


def test_many_steps_lower_the_lasso_objective():
    layer = _layer(3, 8, 3, padding=1).eval()
    x = _x(2, 3, 8, 8)
    objective = []
    for k in (1, 2, 5, 50):
        z, _ = layer.solve(x, steps=k)
        objective.append(float(lasso_terms(x, z, layer.geometry, layer.atoms, 0.1).objective.sum().detach()))
    assert objective == sorted(objective, reverse=True)


# ------------------------------------------------------------------ drop-in parity
@pytest.mark.parametrize(
    "args, kwargs, size",
    [
        ((3, 16, 3), dict(padding=1), (32, 32)),
        ((3, 16, 7), dict(stride=2, padding=3), (31, 30)),
        ((8, 8, 3), dict(padding="same", groups=8, padding_mode="reflect"), (9, 12)),
        ((4, 6, (3, 5)), dict(stride=(1, 2), dilation=2, padding=(2, 4), padding_mode="circular"), (11, 13)),
        ((4, 6, 2), dict(stride=2, padding_mode="replicate", padding=1), (8, 7)),
    ],
)
def test_output_shape_matches_conv2d_and_decode_matches_input(args, kwargs, size):
    conv = nn.Conv2d(*args, bias=False, **kwargs)
    layer = CSCConv2d(*args, **kwargs).eval()
    x = torch.randn(2, args[0], *size)
    z = layer(x)
    assert z.shape == conv(x).shape
    assert layer.decode(z, size).shape == x.shape
    assert layer.decode(z[0], size).shape == x[0].shape  # unbatched


def test_decode_default_size_is_the_usual_even_size():
    layer = CSCConv2d(3, 4, 3, stride=2, padding=1).eval()
    assert layer.decode(layer(torch.randn(1, 3, 32, 32))).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("length", [15, 16])
def test_conv1d_parity(length):
    conv = nn.Conv1d(2, 5, 4, stride=2, padding=1, bias=False, padding_mode="reflect")
    layer = CSCConv1d(2, 5, 4, stride=2, padding=1, padding_mode="reflect").eval()
    x = torch.randn(3, 2, length)
    z = layer(x)
    assert z.shape == conv(x).shape
    assert layer.decode(z, (length,)).shape == x.shape
    assert layer(x[0]).shape == z[0].shape


def test_from_conv_copies_geometry_weights_and_bias():
    conv = nn.Conv2d(3, 6, 5, stride=2, padding=2, dilation=1, bias=True, padding_mode="reflect").double()
    layer = CSCConv2d.from_conv(conv, lam=0.0, steps=1).eval()
    assert (layer.kernel_size, layer.stride, layer.padding, layer.padding_mode) == ((5, 5), (2, 2), (2, 2), "reflect")
    assert torch.equal(layer.weight, conv.weight) and torch.equal(layer.bias, conv.bias)
    x = _x(2, 3, 12, 12)
    t = layer.step_size_for((12, 12))
    norms = conv.weight.flatten(1).norm(dim=1)
    # lam = 0, one step: relu(t conv(x) / ||W_m||), and the conv's bias added to the code
    expected = torch.relu(t * (conv(x) - conv.bias.view(-1, 1, 1)) / norms.view(-1, 1, 1)) + conv.bias.view(-1, 1, 1)
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(ValueError, match="Conv2d"):
        CSCConv2d.from_conv(nn.Conv1d(1, 1, 3))


def test_extra_repr_shows_csc_settings():
    text = repr(CSCConv2d(3, 4, 3, padding=1, lam=0.25, steps=3, mu=0.1, backward="implicit"))
    for piece in ("3, 4, kernel_size=(3, 3)", "lam=0.25", "steps=3", "mu=0.1", "backward='implicit'", "nonneg=True"):
        assert piece in text


def test_weight_has_conv_shape_and_same_parameter_count():
    conv = nn.Conv2d(64, 128, 3, padding=1, groups=4, bias=False)
    layer = CSCConv2d(64, 128, 3, padding=1, groups=4)
    assert layer.weight.shape == conv.weight.shape
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for p in conv.parameters())


# ------------------------------------------------------------------ state: lam and step
def test_loaded_model_uses_the_right_step_on_its_first_forward():
    torch.manual_seed(0)
    layer = CSCConv2d(3, 8, 3, padding=1).train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(8, 3, 16, 16)
    for _ in range(3):
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
    layer.refresh_step_size()
    layer.eval()
    expected = layer(x)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    fresh = CSCConv2d(3, 8, 3, padding=1).eval()  # different random weights, no step yet
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh.step_size, layer.step_size)
    assert torch.equal(fresh(x), expected)


def test_changed_lam_takes_effect_on_the_first_forward():
    layer = _layer(3, 8, 3, padding=1, steps=1).eval()
    x = _x(2, 3, 8, 8)
    layer(x)
    layer.lam = 0.5
    t = layer.step_size_for((8, 8))
    torch.testing.assert_close(layer(x), torch.relu(F.conv2d(x, t * layer.atoms, padding=1) - 0.5 * t))
    assert "lam" in layer.state_dict() and float(layer.state_dict()["lam"]) == 0.5
    torch.testing.assert_close(layer(x, lam=0.5), layer(x))


def test_loading_weights_without_a_step_forgets_the_stale_one():
    layer = _layer(3, 8, 3, padding=1).train()
    layer(_x(2, 3, 8, 8))
    weights_only = {"weight": torch.randn_like(layer.weight), "lam": layer.lam}
    layer.load_state_dict(weights_only, strict=False)
    with pytest.raises(RuntimeError, match="no step size"):
        layer.step_size
    layer.eval()
    fresh = _layer(3, 8, 3, padding=1).eval()
    fresh.load_state_dict(weights_only, strict=False)
    torch.testing.assert_close(layer.step_size_for((8, 8)), fresh.step_size_for((8, 8)))


# ------------------------------------------------------------------ purity
def test_eval_forward_is_pure_and_batch_independent():
    torch.manual_seed(0)
    layer = CSCConv2d(3, 16, 3, padding=1, steps=3).train()
    layer(torch.randn(4, 3, 16, 16))
    layer.eval()
    before = copy.deepcopy(layer.state_dict())
    x = torch.randn(6, 3, 16, 16)
    full = layer(x)
    for other_size in [(20, 20), (16, 16)]:  # a new size too: memoised, never written to state
        layer(torch.randn(2, 3, *other_size))
    after = layer.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not layer.training
    alone = torch.cat([layer(x[i : i + 1]) for i in range(6)])
    mixed = layer(torch.cat([x[3:], torch.randn(5, 3, 16, 16), x[:3]]))
    torch.testing.assert_close(alone, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([mixed[-3:], mixed[:3]]), full, rtol=1e-6, atol=1e-6)
    # in float64 the agreement is to round-off
    layer64 = copy.deepcopy(layer).double()
    x64 = x.double()
    torch.testing.assert_close(layer64(x64[:1]), layer64(x64)[:1], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ gradients
def _functional(layer):
    def f(x, w):
        return torch.func.functional_call(layer, {"weight": w}, (x,))

    return f


@pytest.mark.parametrize("padding_mode, stride", [("zeros", 1), ("reflect", 2)])
def test_gradcheck_unrolled(padding_mode, stride):
    layer = _layer(2, 3, 3, stride=stride, padding=1, padding_mode=padding_mode, steps=3, lam=0.05)
    x = _x(2, 2, 6, 6, seed=5).requires_grad_(True)
    layer.refresh_step_size((6, 6))
    layer.eval()  # the stored step: a constant, as in training
    w = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(_functional(layer), (x, w), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("mu, nonneg", [(0.0, True), (0.1, True), (0.0, False)])
def test_gradcheck_implicit_at_convergence(mu, nonneg):
    # lam = 0.5 keeps the support small and well conditioned: FISTA reaches a relative change of
    # 1e-16 within 500 steps here (at lam = 0.1 this problem needs ~20000). Fast mode checks random
    # projections of the Jacobian: the full check would run ~200 forwards of 2500 steps each.
    layer = _layer(2, 3, 3, padding=1, steps=2500, lam=0.5, mu=mu, nonneg=nonneg, backward="implicit",
                   cg_iters=2000, cg_tol=1e-14)
    x = _x(2, 2, 5, 5, seed=5).requires_grad_(True)
    layer.refresh_step_size((5, 5))
    layer.eval()
    _, trace = layer.solve(x.detach(), trace=True)
    assert float(trace.rel_change[-1].max()) < 1e-13  # converged, so implicit gradients are exact
    w = layer.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(_functional(layer), (x, w), eps=1e-6, atol=1e-7, fast_mode=True)


def test_unrolled_and_implicit_agree_at_convergence():
    x = _x(2, 3, 7, 7, seed=9).requires_grad_(True)
    grads = {}
    for mode in ("unrolled", "implicit"):
        layer = _layer(3, 6, 3, padding=1, steps=1000, lam=0.5, backward=mode, cg_tol=1e-12, cg_iters=1000)
        layer.refresh_step_size((7, 7))
        layer.eval()
        target = _x(2, 6, 7, 7, seed=10)
        loss = (layer(x) * target).sum()
        gx, gw = torch.autograd.grad(loss, (x, layer.weight))
        grads[mode] = (gx, gw)
    for a, b in zip(grads["unrolled"], grads["implicit"]):
        assert float((a - b).norm() / b.norm()) < 1e-6


def test_implicit_differs_from_unrolled_with_two_steps():
    """Sanity for the test above: with K = 2 the code is far from converged, so the two gradients
    must differ -- otherwise the agreement test could not fail."""
    x = _x(2, 3, 7, 7, seed=9).requires_grad_(True)
    out = []
    for mode in ("unrolled", "implicit"):
        layer = _layer(3, 6, 3, padding=1, steps=2, backward=mode).eval()
        (gx,) = torch.autograd.grad(layer(x).sum(), x)
        out.append(gx)
    assert float((out[0] - out[1]).norm() / out[1].norm()) > 1e-2


def test_per_sample_lam_is_differentiable_in_both_modes():
    x = _x(2, 3, 6, 6)
    for mode in ("unrolled", "implicit"):
        layer = _layer(3, 4, 3, padding=1, steps=300, backward=mode, cg_tol=1e-12, cg_iters=1000).eval()
        lam = torch.tensor([0.1, 0.3], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(layer(x, lam=lam).sum(), lam)
        assert g.shape == (2,) and bool((g < 0).all())  # more sparsity, smaller codes


# ------------------------------------------------------------------ sizes, dtypes, layouts
def test_any_input_size_no_shape_pinned():
    layer = CSCConv2d(3, 4, 3, stride=2, padding=1).train()
    for size in [(32, 32), (17, 9), (5, 64)]:
        z = layer(torch.randn(2, 3, *size))
        assert z.shape[2:] == nn.Conv2d(3, 4, 3, stride=2, padding=1)(torch.randn(1, 3, *size)).shape[2:]
    layer.eval()
    for size in [(9, 9), (32, 32)]:
        layer(torch.randn(1, 3, *size))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes(dtype):
    layer = _layer(3, 8, 3, padding=1, dtype=dtype).eval()
    x = torch.randn(2, 3, 10, 10).to(dtype)
    z = layer(x)
    assert z.dtype == dtype
    ref = copy.deepcopy(layer).double()(x.double())
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5
    assert float((z.double() - ref).norm().detach() / ref.norm().detach()) < tol


def test_autocast_bfloat16_on_cpu():
    layer = _layer(3, 8, 3, padding=1, dtype=torch.float32).train()
    x = torch.randn(2, 3, 12, 12)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(x)
    assert z.dtype == torch.bfloat16
    assert float(((z.float() - ref).norm() / ref.norm()).detach()) < 5e-2
    z.float().sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_channels_last():
    layer = _layer(4, 8, 3, padding=1, dtype=torch.float32).eval()
    x = torch.randn(2, 4, 12, 12)
    ref = layer(x)
    layer_cl = copy.deepcopy(layer).to(memory_format=torch.channels_last)
    z = layer_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    layer = _layer(3, 8, 3, padding=1, dtype=torch.float32).eval()
    x = torch.randn(2, 3, 16, 16)
    ref = layer(x)
    z = copy.deepcopy(layer).cuda()(x.cuda())
    torch.testing.assert_close(z.cpu(), ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lam=-0.1), "lam"),
        (dict(steps=0), "steps"),
        (dict(steps=1.5), "steps"),
        (dict(mu=-1.0), "mu"),
        (dict(method="admm"), "method"),
        (dict(backward="adjoint"), "backward"),
        (dict(step_scale=1.5), "step_scale"),
        (dict(groups=2), "in_channels"),
        (dict(padding="same", stride=2), "padding"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CSCConv2d(3, 4, 3, **kwargs)


def test_bad_inputs_are_refused_with_a_clear_message():
    layer = CSCConv2d(3, 4, 5)
    with pytest.raises(ValueError, match="in_channels"):
        layer(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        layer(torch.randn(1, 3, 3, 3))
    with pytest.raises(ValueError, match="4-D"):
        layer(torch.randn(3, 8))
    with pytest.raises(ValueError, match="lam"):
        layer.lam = -1
    with pytest.raises(ValueError, match="steps"):
        layer.steps = 0


@pytest.mark.parametrize("mode", ["unrolled", "implicit", "recompute"])
def test_changing_lam_between_forward_and_backward_keeps_the_forward_gradient(mode):
    """A test-time lambda set for one forward and restored before backward (as attacks do) must
    give the gradient of that forward, in every backward mode."""
    layer = _layer(3, 4, 3, padding=1, steps=3, backward=mode, cg_tol=1e-10, cg_iters=500).eval()
    x = _x(2, 3, 6, 6).requires_grad_(True)
    layer.lam = 0.3
    expected = torch.autograd.grad(layer(x).sum(), x)[0]
    out = layer(x)
    layer.lam = 0.1  # restored in place before backward
    got = torch.autograd.grad(out.sum(), x)[0]
    torch.testing.assert_close(got, expected)


def test_warm_state_api_makes_a_copy_take_the_identical_next_step():
    """warm_state / load_warm_state (what a resumed training run uses): after a training forward, a
    fresh layer given the state dict and the warm state refreshes its step size exactly as the
    original does on the next training forward -- no private fields written from outside."""
    from csc_cli import CSCConvNd, csc_layers

    torch.manual_seed(0)
    layer = CSCConv2d(3, 8, 3, padding=1, lam=0.1, steps=2).double().train()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    assert layer.warm_state() is None and layer.trained_size is None
    layer(x)
    state = layer.warm_state()
    assert state is not None and state["size"].tolist() == [12, 12] and layer.trained_size == (12, 12)
    twin = CSCConv2d(3, 8, 3, padding=1, lam=0.1, steps=2).double().train()
    twin.load_state_dict(layer.state_dict())
    twin.load_warm_state({k: v.clone() for k, v in state.items()})
    with torch.no_grad():  # the same small dictionary update on both
        for m in (layer, twin):
            m.weight.add_(0.01 * torch.ones_like(m.weight))
    assert torch.equal(layer(x), twin(x)) and torch.equal(layer.lipschitz, twin.lipschitz)
    with pytest.raises(ValueError, match="warm state for a 2-d layer"):
        twin.load_warm_state({**state, "size": torch.tensor([12])})
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), layer, CSCConv1d(4, 4, 3))
    assert list(csc_layers(model)) == ["1", "2"] and all(isinstance(m, CSCConvNd) for m in csc_layers(model).values())


def test_atom_bank_has_one_unit_atom_per_code_channel_for_convs_and_transposed_convs():
    """inspect reads atoms through atom_bank: for a conv it is the unit-norm weight; for a transposed
    conv (weight (C_in, C_out/g, k, k)) atom (g, m) is the g-th input block of column m."""
    from csc_cli import CSCConvTranspose2d
    from csc_cli.jobs.classifier.inspect import layer_card

    conv = CSCConv2d(4, 6, 3, groups=2)
    assert torch.equal(conv.atom_bank(), conv.atoms) and torch.equal(conv.atom_bank(normalized=False), conv.weight)
    up = CSCConvTranspose2d(4, 6, 3, stride=2, groups=2)
    bank, atoms = up.atom_bank().detach(), up.atoms.detach()
    assert bank.shape == (6, 2, 3, 3)
    for o in range(6):
        g, m = divmod(o, 3)
        assert torch.equal(bank[o], atoms[2 * g : 2 * g + 2, m])
    torch.testing.assert_close(bank.flatten(1).norm(dim=1), torch.ones(6))
    card = layer_card("up", up)
    assert card["atoms_unit_norm"] and card["class"] == "CSCConvTranspose2d" and 0 <= card["coherence"] <= 1
