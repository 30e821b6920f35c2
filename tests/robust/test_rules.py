"""The label-free lambda rules (csc_cli/robust/rules.py) on synthetic data where the answer is known."""

import math

import pytest
import torch

import csc_cli
from csc_cli.layers import CSCConv2d
from csc_cli.models import build_model
from csc_cli.robust.lam import LambdaPolicy
from csc_cli.robust.rules import (RULES, DiscrepancyRule, Level, ResidualRule, SigmaRule, TableRule, fit_rules,
                                  interpolate, isotonic, measure_level, noise_sigma, rule_from_dict)

MAD_RELATIVE_SE = 1.166  # sd of the MAD-based sigma estimate is ~1.166 sigma / sqrt(n) for Gaussian data


def sparse_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Images that are sparse in a dictionary of 5x5 blobs: 12 spikes per channel, convolved."""
    spikes = torch.zeros(n, 3, size, size, dtype=torch.float64)
    flat = spikes.view(n, 3, -1)
    for i in range(n):
        for c in range(3):
            idx = torch.randperm(size * size, generator=gen)[:12]
            flat[i, c, idx] = torch.rand(12, generator=gen, dtype=torch.float64) * 2
    blob = torch.outer(torch.hann_window(7, dtype=torch.float64)[1:-1], torch.hann_window(7, dtype=torch.float64)[1:-1])
    kernel = blob.expand(3, 1, 5, 5).contiguous()
    return torch.nn.functional.conv2d(spikes, kernel, padding=2, groups=3)


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3])
def test_noise_sigma_recovers_a_known_noise_level(sigma):
    gen = torch.Generator().manual_seed(0)
    size, n = 64, 8
    x = sparse_images(n, size, gen)
    noisy = x + sigma * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    est = noise_sigma(noisy)
    coefficients = 3 * (size // 2) ** 2
    se = MAD_RELATIVE_SE / math.sqrt(coefficients)  # 2.1% here: the 10% bound is ~4.7 standard errors
    assert 0.10 > 4 * se
    assert est.shape == (n,)
    assert ((est / sigma - 1).abs() < 0.10).all(), est / sigma
    # the image content alone reads as (almost) no noise, unlike its standard deviation
    assert float(noise_sigma(x).max()) < 0.05 * float(x.std())


def test_noise_sigma_any_spatial_rank_and_refusals():
    gen = torch.Generator().manual_seed(1)
    one_d = 0.2 * torch.randn(4, 2, 4096, generator=gen, dtype=torch.float64)
    se = MAD_RELATIVE_SE / math.sqrt(2 * 2048)
    assert ((noise_sigma(one_d) / 0.2 - 1).abs() < 6 * se).all()
    three_d = 0.5 * torch.randn(2, 1, 32, 32, 32, generator=gen, dtype=torch.float64)
    assert ((noise_sigma(three_d) / 0.5 - 1).abs() < 6 * MAD_RELATIVE_SE / math.sqrt(16 ** 3)).all()
    odd = 0.2 * torch.randn(2, 3, 33, 31, generator=gen, dtype=torch.float64)  # odd sizes are cropped
    assert noise_sigma(odd).shape == (2,)
    with pytest.raises(ValueError, match="at least 2 values"):
        noise_sigma(torch.zeros(1, 1, 1, 8))
    with pytest.raises(ValueError, match=r"\(N, C, \*spatial\)"):
        noise_sigma(torch.zeros(8, 8))


def identity_layer(channels: int = 3) -> CSCConv2d:
    """1x1 orthonormal atoms and the full step: one step is the exact Lasso solution soft(x, lambda)."""
    layer = CSCConv2d(channels, channels, 1, lam=0.1, steps=1, nonneg=False, step_scale=1.0).double()
    with torch.no_grad():
        layer.weight.copy_(torch.eye(channels, dtype=torch.float64).view(channels, channels, 1, 1))
    return layer


def closed_form_lambda(x: torch.Tensor, target: float) -> float:
    """The lambda at which soft thresholding leaves ``mean(clamp(x, -lam, lam)^2) = target`` (the
    residual of the Lasso with an orthonormal dictionary), by bisection on the closed form."""
    lo, hi = 0.0, float(x.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if float(x.clamp(-mid, mid).square().mean()) > target else (mid, hi)
    return (lo + hi) / 2


def test_discrepancy_lambda_matches_the_closed_form_within_the_bisection_bracket():
    gen = torch.Generator().manual_seed(2)
    sigma = 0.1
    clean = sparse_images(6, 32, gen)
    x = clean + sigma * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    layer = identity_layer()
    rule = DiscrepancyRule(layer="conv1", reference_lam=0.1, lo=0.0, hi=2.0, q=0.0, tau=1.0, iterations=12)
    got = rule.lam_for(layer, x)
    bracket = (rule.hi - rule.lo) / 2 ** rule.iterations
    target = noise_sigma(x).square()
    for i in range(x.shape[0]):
        want = closed_form_lambda(x[i], float(target[i]))
        assert abs(float(got[i]) - want) <= bracket, (float(got[i]), want)
        # and the universal threshold's order: between sigma and sigma * sqrt(2 log n) (+ the bracket)
        assert sigma * 0.5 < want < sigma * math.sqrt(2 * math.log(x[i].numel())) + bracket


def test_every_rule_fits_known_lines_and_round_trips():
    levels = [Level("clean", 0, 0.1, r=0.10, sigma=0.01, sigma2=0.0001, r_best=0.10),
              Level("gaussian_noise", 1, 0.3, r=0.20, sigma=0.05, sigma2=0.0025, r_best=0.14),
              Level("gaussian_noise", 3, 0.5, r=0.30, sigma=0.09, sigma2=0.0081, r_best=0.18),
              Level("gaussian_noise", 5, 0.4, r=0.40, sigma=0.13, sigma2=0.0169, r_best=0.22)]
    rules = fit_rules("conv1", 0.1, levels, lo=0.1, hi=1.4)
    assert list(rules) == list(RULES)
    res, sig, tab, dis = (rules[n] for n in RULES)
    assert isinstance(res, ResidualRule) and isinstance(sig, SigmaRule)
    assert isinstance(tab, TableRule) and isinstance(dis, DiscrepancyRule)
    # the least-squares lines, computed by hand: best = 1.1 r + 0.05 and 2.75 sigma + 0.1325
    assert res.a == pytest.approx(1.1) and res.b == pytest.approx(0.05)
    assert sig.a == pytest.approx(2.75) and sig.b == pytest.approx(0.1325)
    assert tab.knots == [0.01, 0.05, 0.09, 0.13] and tab.lams == pytest.approx([0.1, 0.3, 0.45, 0.45])  # pooled
    assert dis.q > 0 and dis.tau > 0
    for rule in rules.values():
        assert rule.fitted_on == ["gaussian_noise"] and len(rule.points) == 4
        again = rule_from_dict(rule.to_dict())
        assert again == rule and type(again) is type(rule)


@pytest.mark.parametrize("bad, message", [
    ("x", "not an object"),
    ({"rule": "magic", "layer": "conv1", "reference_lam": 0.1}, "not one of"),
    ({"rule": "sigma", "layer": "conv1", "reference_lam": 0.1, "a": float("nan")}, "non-finite"),
    ({"rule": "sigma", "layer": "conv1", "reference_lam": 0.1, "a": "lots"}, "malformed"),
    ({"rule": "sigma", "reference_lam": 0.1}, "malformed"),
    ({"rule": "sigma_table", "layer": "conv1", "reference_lam": 0.1, "knots": [0.2, 0.1], "lams": [1, 2]}, "not sorted"),
    ({"rule": "sigma_table", "layer": "conv1", "reference_lam": 0.1, "knots": [0.1], "lams": []}, "as many"),
    ({"rule": "sigma", "layer": "conv1", "reference_lam": 0.1, "lo": 2.0, "hi": 1.0}, "bad range"),
])
def test_bad_stored_rules_are_one_line_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        rule_from_dict(bad)


def test_format_one_rules_still_load():
    old = {"layer": "conv1", "a": 2.0, "b": 0.1, "reference_lam": 0.1, "lo": 0.1, "hi": 1.4, "points": None}
    rule = rule_from_dict(old)
    assert isinstance(rule, ResidualRule) and rule.a == 2.0


def test_isotonic_and_interpolate():
    assert isotonic([0.1, 0.3, 0.2, 0.5, 0.4]) == pytest.approx([0.1, 0.25, 0.25, 0.45, 0.45])
    assert isotonic([3.0, 2.0, 1.0]) == pytest.approx([2.0, 2.0, 2.0])
    s = torch.tensor([0.0, 0.05, 0.2, 1.0])
    assert interpolate(s, [0.01, 0.1, 0.3], [0.1, 0.3, 0.7]).tolist() == pytest.approx([0.1, 0.1 + 0.2 * 4 / 9, 0.5, 0.7])
    assert interpolate(s, [0.2], [0.4]).tolist() == pytest.approx([0.4] * 4)


def stem_input(model, x):
    captured = {}
    handle = model.conv1.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return captured["x"]


@pytest.mark.parametrize("kind", RULES)
def test_each_rule_applies_per_input_and_round_trips_through_the_model_file(kind, tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20_cifar", 10, csc="stem").eval()
    gen = torch.Generator().manual_seed(3)
    smooth = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=gen), size=32, mode="bilinear")
    noisy = (smooth + 0.3 * torch.randn(8, 3, 32, 32, generator=gen)).clamp(0, 1)
    ref = float(model.conv1.lam)
    levels = [measure_level(model.conv1, [stem_input(model, smooth[:4])], "clean", 0, 0.1, ref),
              measure_level(model.conv1, [stem_input(model, noisy[:4])], "gaussian_noise", 3, 0.6, ref)]
    rule = fit_rules("conv1", ref, levels, lo=0.1, hi=1.4, rules=[kind])[kind]
    model.csc_card.lambda_rule = rule.to_dict()
    path = tmp_path / "m.safetensors"
    csc_cli.save(model, path)
    loaded = csc_cli.load(path).eval()
    _, stored = LambdaPolicy.parse("auto").resolve(loaded)
    assert stored == rule
    x = torch.cat([smooth[4:6], noisy[4:6]])  # two clean, two noisy images it was not fitted on
    with torch.no_grad(), LambdaPolicy.parse("auto").applied(loaded):
        auto = loaded(x)
    lam = stored.lam_for(loaded.conv1, stem_input(loaded, x))
    assert lam.shape == (4,) and bool(((lam >= 0.1) & (lam <= 1.4)).all())
    assert float(lam[2:].min()) > float(lam[:2].max())  # noisier inputs get larger lambdas
    with torch.no_grad():
        manual = []
        for i, v in enumerate(lam):
            loaded.conv1.lam = float(v)
            manual.append(loaded(x[i : i + 1]))
        loaded.conv1.lam = rule.reference_lam
    torch.testing.assert_close(auto, torch.cat(manual), rtol=1e-4, atol=1e-5)
