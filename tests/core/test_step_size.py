"""Step size t = step_scale / L against the exact ||A||^2 of the materialised operator."""

import pytest
import torch

from csc_cli import CSCConv2d
from csc_cli.core import ConvGeometry, dense_matrix, lipschitz_upper_bound, power_iteration
from csc_cli.core.operators import normalize_atoms

GEOMETRIES = [
    # (cin, cout, kernel, stride, padding, groups, mode)
    (3, 8, 3, 1, 1, 1, "zeros"),
    (3, 8, 7, 2, 3, 1, "zeros"),
    (4, 4, 3, 1, 1, 4, "zeros"),  # depthwise
    (2, 6, 3, 2, 1, 1, "reflect"),
    (2, 6, 3, 1, 2, 1, "replicate"),
    (2, 3, 5, 1, 2, 1, "circular"),
    (4, 4, 1, 2, 0, 1, "zeros"),
]


def exact_lipschitz(geom, atoms, size):
    """||A||^2: the squared largest singular value of the dense analysis matrix (float64 SVD)."""
    m = dense_matrix(geom, atoms.double(), size)
    return float(torch.linalg.matrix_norm(m, ord=2)) ** 2


@pytest.mark.parametrize("case", GEOMETRIES, ids=str)
@pytest.mark.parametrize("size", [(4, 4), (7, 9), (12, 12)])
def test_power_iteration_converges_to_exact_norm(case, size, gen):
    cin, cout, k, s, p, g, mode = case
    geom = ConvGeometry.create(2, cin, cout, k, s, p, 1, g, mode)
    try:
        geom.output_size(size)
    except ValueError:
        pytest.skip("input too small for this geometry")
    atoms = normalize_atoms(torch.randn(geom.weight_shape, generator=gen, dtype=torch.float64))
    exact = exact_lipschitz(geom, atoms, size)
    est, _, iters = power_iteration(geom, atoms, size)
    # a Rayleigh quotient: never above the truth, and converged to well within the 10% margin
    assert float(est) <= exact * (1 + 1e-9)
    assert float(est) >= 0.99 * exact, (float(est), exact, iters)  # the step needs >= 0.9
    assert float(lipschitz_upper_bound(geom, atoms, size)) >= exact * (1 - 1e-9)


@pytest.mark.parametrize("case", GEOMETRIES, ids=str)
def test_layer_step_is_safe_at_every_size_and_not_wasteful_at_its_own(case, gen):
    cin, cout, k, s, p, g, mode = case
    torch.manual_seed(3)
    layer = CSCConv2d(cin, cout, k, stride=s, padding=p, groups=g, padding_mode=mode, dtype=torch.float64)
    layer.train()
    layer(torch.randn(2, cin, 10, 10, dtype=torch.float64))  # the size in use
    t = float(layer.step_size)
    atoms = layer.atoms.detach()
    true_here = exact_lipschitz(layer.geometry, atoms, (10, 10))
    assert 0.7 <= t * true_here <= 1.0
    layer.eval()
    for size in [(4, 4), (5, 8), (10, 10), (13, 11), (16, 16)]:
        t_size = float(layer.step_size_for(size))
        product = t_size * exact_lipschitz(layer.geometry, atoms, size)
        assert 0.7 <= product <= 1.0, (size, product)


def test_size_dependence_is_real_and_handled():
    """For a smooth atom, ||A||^2 at 4x4 is far below the infinite-domain value: one number for all
    sizes would be either unsafe at large sizes or wasteful at small ones. Ours is right at each."""
    layer = CSCConv2d(1, 1, 3, padding=1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    layer.eval()
    small = exact_lipschitz(layer.geometry, layer.atoms.detach(), (4, 4))
    large = exact_lipschitz(layer.geometry, layer.atoms.detach(), (24, 24))
    assert small < 0.65 * large  # 6.85^2/81 = 0.58 (1-D tridiagonal eigenvalues, squared)
    assert 0.7 <= float(layer.step_size_for((4, 4))) * small <= 1.0
    assert 0.7 <= float(layer.step_size_for((24, 24))) * large <= 1.0


def test_eval_step_is_deterministic():
    layer = CSCConv2d(3, 16, 3, padding=1).eval()
    torch.manual_seed(0)
    a = layer.step_size_for((20, 20))
    torch.manual_seed(99)  # no random restarts: the global RNG must not matter
    fresh = CSCConv2d(3, 16, 3, padding=1).eval()
    fresh.load_state_dict(layer.state_dict())
    b = fresh.step_size_for((20, 20))
    assert torch.equal(a, b)


def _record_power_calls(monkeypatch):
    import csc_cli.step_size as step_size  # the layer's step-size state runs the power iterations

    calls = []
    real = step_size.power_iteration

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append({"warm": kwargs.get("v0") is not None, "iterations": out[2]})
        return out

    monkeypatch.setattr(step_size, "power_iteration", spy)
    return calls


def test_training_refresh_is_warm_and_cheap_for_small_updates(monkeypatch):
    torch.manual_seed(0)
    layer = CSCConv2d(8, 16, 3, padding=1).train()
    x = torch.randn(4, 8, 12, 12)
    calls = _record_power_calls(monkeypatch)
    layer(x)
    ratios = []
    for _ in range(10):
        with torch.no_grad():  # a small update, as one SGD step makes
            layer.weight.add_(0.003 * torch.randn_like(layer.weight) * layer.weight.abs().mean())
        layer(x)
        ratios.append(float(layer.lipschitz) / exact_lipschitz(layer.geometry, layer.atoms.detach(), (12, 12)))
    assert calls[0]["warm"] is False and calls[0]["iterations"] >= 20  # the first estimate is cold
    assert all(c["warm"] for c in calls[1:])
    assert max(c["iterations"] for c in calls[1:]) <= 3  # measured: 1-2 iterations
    assert min(ratios) >= 0.99 and max(ratios) <= 1 + 1e-5


def test_training_refresh_restarts_cold_after_a_large_update(monkeypatch):
    torch.manual_seed(0)
    layer = CSCConv2d(8, 16, 3, padding=1).train()
    x = torch.randn(4, 8, 12, 12)
    layer(x)
    calls = _record_power_calls(monkeypatch)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) + 0.5)  # a large change of dictionary
    layer(x)
    exact = exact_lipschitz(layer.geometry, layer.atoms.detach(), (12, 12))
    assert calls == [{"warm": False, "iterations": calls[0]["iterations"]}]
    assert 0.995 * exact <= float(layer.lipschitz) <= exact * (1 + 1e-5)


def test_training_step_stays_safe_while_the_dictionary_changes_fast():
    """Dictionary learning on real digits with Adam at lr 0.01: the top eigen-direction of A A^T
    jumps between batches (DC overtakes the rest). A single warm-started power vector lagged to
    0.39 of the true L here (t L = 2.3: FISTA diverged, objective 9e7); the refresh must keep
    t * L_true <= 1 on every batch."""
    from csc_cli.core import lasso_terms
    from csc_cli.data import load_digits

    torch.manual_seed(0)
    images, _ = load_digits(16)
    layer = CSCConv2d(1, 32, 5, padding=2).train()
    opt = torch.optim.Adam(layer.parameters(), lr=0.01)
    products, losses = [], []
    for b in range(20):
        x = images[b * 64 : (b + 1) * 64]
        with torch.no_grad():
            z, _ = layer.solve(x, steps=30)
        products.append(float(layer.step_size) * exact_lipschitz(layer.geometry, layer.atoms.detach(), (16, 16)))
        loss = lasso_terms(x, z, layer.geometry, layer.atoms, layer.lam).objective.mean()
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert max(products) <= 1.0 and min(products) >= 0.7
    assert max(losses) < 10 * losses[0]


def test_a_new_size_in_training_restarts_cold_and_converged():
    # Seeded: how close the converged block estimate gets depends on the dictionary's spectrum
    # (the stopping rule bounds the last change, not the error), so the draw must not depend on
    # which tests ran before.
    torch.manual_seed(0)
    layer = CSCConv2d(4, 8, 3, padding=1, dtype=torch.float64).train()
    layer(torch.randn(2, 4, 8, 8, dtype=torch.float64))
    layer(torch.randn(2, 4, 15, 15, dtype=torch.float64))
    exact = exact_lipschitz(layer.geometry, layer.atoms.detach(), (15, 15))
    assert tuple(layer.lipschitz_size.tolist()) == (15, 15)
    assert 0.995 * exact <= float(layer.lipschitz) <= exact * (1 + 1e-9)


# ------------------------------------------------------------------ the step-size state object
def test_pin_stores_the_step_an_eval_forward_uses_at_that_size():
    """StepSizeState.pin (what the ONNX exporter does on a copy): the step an eval forward at a new
    size uses becomes the stored one -- the same number, now read from the buffers -- and at the
    stored size nothing changes."""
    torch.manual_seed(0)
    layer = CSCConv2d(3, 8, 3, padding=1, dtype=torch.float64).train()
    layer(torch.randn(2, 3, 12, 12, dtype=torch.float64))
    layer.eval()
    trained = layer.step_size.clone()
    assert layer.step_state.size == (12, 12) and layer.warm_state() is not None
    assert torch.equal(layer.step_state.pin((12, 12)), trained) and layer.warm_state() is not None  # unchanged
    expected = layer.step_size_for((20, 20))
    assert torch.equal(layer.step_state.pin((20, 20)), expected)
    assert layer.trained_size == (20, 20) and layer.lipschitz_size.tolist() == [20, 20]
    assert torch.equal(layer.step_size, expected) and torch.equal(layer.step_size_for((20, 20)), expected)
    assert layer.warm_state() is None  # the training warm start was for the old size
    assert 0.7 <= float(expected) * exact_lipschitz(layer.geometry, layer.atoms.detach(), (20, 20)) <= 1.0


def test_the_step_state_belongs_to_its_layer_and_follows_copies():
    """A deep copy's state reads the copy's buffers: pinning the copy leaves the original alone."""
    import copy

    from csc_cli.step_size import StepSizeState

    torch.manual_seed(0)
    layer = CSCConv2d(3, 8, 3, padding=1).train()
    layer(torch.randn(2, 3, 10, 10))
    twin = copy.deepcopy(layer).eval()
    assert isinstance(twin.step_state, StepSizeState) and twin.step_state is not layer.step_state
    twin.step_state.pin((16, 16))
    assert layer.trained_size == (10, 10) and twin.trained_size == (16, 16)
    assert layer.lipschitz_size.tolist() == [10, 10] and not torch.equal(layer.lipschitz, twin.lipschitz)
