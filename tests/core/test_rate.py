"""Rate reduction and the CTRL objective (csc_cli.core.rate) against closed forms (known spectra), the
literal d x d formula evaluated with torch.logdet one class at a time, exact identities (dR(Z, Z) = 0,
concavity), autograd's numerical gradcheck and the reference magnitudes quoted in PAPER.md section 2."""

import math

import pytest
import torch

from csc_cli.core import (
    RateReduction,
    class_rates,
    coding_rate,
    compressed_rate,
    ctrl_objective,
    pairwise_rate_reduction,
    rate_reduction,
    small_class_warning,
)
from csc_cli.core import rate as rate_mod

EPS2 = 0.5


# ------------------------------------------------------------------ independent references
def ref_rate(Z, eps2=EPS2):
    """The literal definition: 1/2 logdet(I_d + d/(n eps2) Z^T Z) on the d x d matrix, torch.logdet (LU),
    float64 -- no Cholesky, no n x n shortcut."""
    Z = Z.double()
    n, d = Z.shape
    if n == 0:
        return torch.zeros((), dtype=torch.float64)
    return 0.5 * torch.logdet(torch.eye(d, dtype=torch.float64) + d / (n * eps2) * Z.T @ Z)


def ref_class_rates(Z, labels, K, eps2=EPS2):
    return torch.stack([ref_rate(Z[labels == k], eps2) for k in range(K)])


def ref_pairwise(Z, Zh, labels, K, eps2=EPS2):
    out = []
    for k in range(K):
        zk, hk = Z[labels == k], Zh[labels == k]
        out.append(ref_rate(torch.cat([zk, hk]), eps2) - 0.5 * ref_rate(zk, eps2) - 0.5 * ref_rate(hk, eps2))
    return torch.stack(out)


def unit_rows(gen, n, d, dtype=torch.float64):
    z = torch.randn((n, d), generator=gen, dtype=dtype)
    return z / z.norm(dim=1, keepdim=True)


def balanced_labels(n, K):
    return torch.arange(n) % K


def orthogonal(gen, rows, cols):
    q, _ = torch.linalg.qr(torch.randn((rows, cols), generator=gen, dtype=torch.float64))
    return q


# ------------------------------------------------------------------ coding rate: closed form
@pytest.mark.parametrize("n, d", [(5, 12), (12, 5), (8, 8), (40, 16), (3, 128)])
@pytest.mark.parametrize("eps2", [0.5, 0.1])
def test_coding_rate_matches_known_spectrum(gen, n, d, eps2):
    """Z = U diag(s) V^T with orthonormal U (n x r), V (d x r): R = 1/2 sum_i log(1 + d/(n eps2) s_i^2).
    n < d takes the n x n Gram branch, n >= d the d x d one; both must give the closed form."""
    r = min(n, d)
    U, V = orthogonal(gen, n, r), orthogonal(gen, d, r)
    s = torch.rand(r, generator=gen, dtype=torch.float64) * 3 + 0.01
    Z = U @ torch.diag(s) @ V.T
    expected = 0.5 * torch.log1p(d / (n * eps2) * s**2).sum()
    got = coding_rate(Z, eps2)
    assert got.dtype == torch.float64
    assert abs(float(got - expected)) < 1e-10
    assert abs(float(ref_rate(Z, eps2) - expected)) < 1e-10  # the reference itself is right


def test_coding_rate_of_zero_features_is_zero():
    assert float(coding_rate(torch.zeros(4, 7, dtype=torch.float64))) == 0.0


# ------------------------------------------------------------------ exact identities
@pytest.mark.parametrize("n, d, K", [(30, 64, 3), (300, 16, 4), (12, 128, 2)])
def test_rate_reduction_of_features_with_themselves_is_zero(gen, n, d, K):
    """R([Z; Z]) with n -> 2n has scale d/(2n eps2) * 2 Z^T Z = d/(n eps2) Z^T Z, so dR(Z, Z) = 0 exactly
    (pairwise, per class, and binary); float64 rounding only."""
    Z = unit_rows(gen, n, d)
    labels = balanced_labels(n, K)
    total, per_class = pairwise_rate_reduction(Z, Z, labels, K)
    assert per_class.abs().max() < 1e-9 and abs(float(total)) < 1e-9
    T, terms = ctrl_objective(Z, Z, mode="binary")
    assert abs(float(T)) < 1e-9
    assert abs(float(terms["R_joint"] - terms["R_Z"])) < 1e-9


def test_pairwise_matches_second_moments_not_samples(gen):
    """Permuting rows within each class leaves Z_k^T Z_k unchanged: the pairwise term stays 0 although
    no zh_i equals its z_i. Any other change of a class's second moment makes it positive."""
    n, d, K = 60, 24, 3
    Z = unit_rows(gen, n, d)
    labels = balanced_labels(n, K)
    Zh = Z.clone()
    for k in range(K):
        idx = (labels == k).nonzero().flatten()
        Zh[idx] = Z[idx[torch.randperm(len(idx), generator=gen)]]
    assert (Zh - Z).abs().max() > 0.1
    total, per_class = pairwise_rate_reduction(Z, Zh, labels, K)
    assert per_class.abs().max() < 1e-9
    Zh[labels == 1] = unit_rows(gen, int((labels == 1).sum()), d)
    _, per_class = pairwise_rate_reduction(Z, Zh, labels, K)
    assert per_class[1] > 1e-3 and per_class[[0, 2]].abs().max() < 1e-9


def test_rate_reductions_are_non_negative(gen):
    """Concavity of logdet: R(Z) >= sum_k (n_k/n) R(Z_k) and R([A; B]) >= (R(A) + R(B))/2 for equal
    sizes. 60 seeded random problems: unit and unnormalised rows, low-rank clusters, every shape regime."""
    for trial in range(60):
        K = int(torch.randint(2, 6, (1,), generator=gen))
        n = int(torch.randint(K, 200, (1,), generator=gen))
        d = int(torch.randint(2, 100, (1,), generator=gen))
        labels = torch.randint(0, K, (n,), generator=gen)
        if trial % 3 == 0:  # each class near its own random subspace
            rank = max(1, d // 4)
            bases = torch.randn((K, rank, d), generator=gen, dtype=torch.float64)
            Z = torch.einsum("nr,nrd->nd", torch.randn((n, rank), generator=gen, dtype=torch.float64), bases[labels])
            Zh = Z + 0.1 * torch.randn((n, d), generator=gen, dtype=torch.float64)
        elif trial % 3 == 1:
            Z, Zh = unit_rows(gen, n, d), unit_rows(gen, n, d)
        else:
            Z = 3 * torch.randn((n, d), generator=gen, dtype=torch.float64)
            Zh = torch.randn((n, d), generator=gen, dtype=torch.float64)
        eps2 = float(torch.rand((1,), generator=gen)) + 0.05
        assert float(rate_reduction(Z, labels, K, eps2).dR) >= -1e-9, trial
        total, per_class = pairwise_rate_reduction(Z, Zh, labels, K, eps2)
        assert float(per_class.min()) >= -1e-9 and float(total) >= -1e-9, trial
        assert float(ctrl_objective(Z, Zh, mode="binary", eps2=eps2)[0]) >= -1e-9, trial


# ------------------------------------------------------------------ PAPER.md magnitudes
def _paper_batch(seed, structure):
    """d = 128, n = 1600, 10 classes of 160: random unit features, or each class uniformly random unit
    vectors inside its own 12-dim coordinate block (coordinates 12k .. 12k+11; 8 coordinates unused)."""
    gen = torch.Generator().manual_seed(seed)
    n, d, K = 1600, 128, 10
    labels = balanced_labels(n, K)
    if structure == "random":
        return unit_rows(gen, n, d), labels
    Z = torch.zeros((n, d), dtype=torch.float64)
    for k in range(K):
        Z[labels == k, 12 * k : 12 * k + 12] = unit_rows(gen, n // K, 12)
    return Z, labels


def test_paper_magnitudes():
    """PAPER.md: random unit features R ~ 69.2, dR ~ 9.9; ten orthogonal 12-dim subspaces dR ~ 49; upper
    bound 1/2 d ln(1 + 1/eps2) = 70.3. Over 5 seeds we measured R in [69.155, 69.209], dR in
    [9.889, 9.994], orthogonal dR in [49.090, 49.162] (R 67.53..67.61): seed-to-seed spread is about
    0.02 (R) and 0.04 (dR). Bands: half a unit of PAPER's last quoted digit plus ~2-3 spreads, i.e.
    69.2 +- 0.15, 9.9 +- 0.2, 49 +- 0.5 (PAPER gives 49 to the unit)."""
    bound = 0.5 * 128 * math.log(1 + 1 / EPS2)
    assert abs(bound - 70.3) < 0.05
    for seed in range(5):
        Z, labels = _paper_batch(seed, "random")
        rr = rate_reduction(Z, labels, 10)
        assert isinstance(rr, RateReduction)
        assert abs(float(rr.R) - 69.2) < 0.15, float(rr.R)
        assert abs(float(rr.dR) - 9.9) < 0.2, float(rr.dR)
        assert float(rr.R) <= bound and float(rr.class_rates.max()) <= bound

        Z, labels = _paper_batch(seed, "orthogonal")
        ro = rate_reduction(Z, labels, 10)
        assert abs(float(ro.dR) - 49.0) < 0.5, float(ro.dR)
        assert float(ro.R) <= bound
        # each class's 160 unit vectors fill 12 dims: R_k < 1/2 * 12 * ln(1 + d/(n_k eps2) * n_k/12)
        assert float(ro.class_rates.max()) <= 6 * math.log(1 + 128 / (EPS2 * 12))


def test_upper_bound_for_unit_features(gen):
    """trace(Z^T Z) = n for unit rows, so by AM-GM on the eigenvalues R <= 1/2 d ln(1 + 1/eps2) for every
    n, d (equality iff Z^T Z = (n/d) I)."""
    for n, d in [(3, 50), (50, 3), (200, 32), (64, 64)]:
        Z = unit_rows(gen, n, d)
        assert float(coding_rate(Z)) <= 0.5 * d * math.log(1 + 1 / EPS2) + 1e-9
    Z = torch.eye(16, dtype=torch.float64).repeat(3, 1)  # tight frame: equality
    assert abs(float(coding_rate(Z)) - 8 * math.log(3)) < 1e-10


# ------------------------------------------------------------------ batched classes vs a loop
@pytest.mark.parametrize("n, d, K", [(40, 64, 4), (24, 64, 3), (90, 40, 3), (300, 20, 5), (30, 16, 3)])
def test_batched_class_rates_match_a_per_class_loop(gen, n, d, K):
    """One batched Cholesky (padded classes, per-class scales, n_k x n_k or d x d Grams) against the
    literal d x d formula with torch.logdet, one class at a time. Unequal class sizes."""
    labels = torch.randint(0, K, (n,), generator=gen)
    labels[:K] = torch.arange(K)  # every class present
    Z, Zh = unit_rows(gen, n, d), unit_rows(gen, n, d)
    rates, weights = class_rates(Z, labels, K)
    ref = ref_class_rates(Z, labels, K)
    assert (rates - ref).abs().max() < 1e-10
    assert (weights - torch.bincount(labels, minlength=K).double() / n).abs().max() == 0
    assert abs(float(compressed_rate(Z, labels, K) - (weights * ref).sum())) < 1e-10
    total, per_class = pairwise_rate_reduction(Z, Zh, labels, K)
    ref_pc = ref_pairwise(Z, Zh, labels, K)
    assert (per_class - ref_pc).abs().max() < 1e-10
    assert abs(float(total - ref_pc.sum())) < 1e-10
    rr = rate_reduction(Z, labels, K)
    assert abs(float(rr.dR - (ref_rate(Z) - (weights * ref).sum()))) < 1e-10


def test_absent_classes_contribute_nothing(gen):
    n, d, K = 45, 32, 6
    labels = torch.tensor([0, 2, 5])[torch.randint(0, 3, (n,), generator=gen)]
    Z, Zh = unit_rows(gen, n, d), unit_rows(gen, n, d)
    rates, weights = class_rates(Z, labels, K)
    absent = torch.tensor([1, 3, 4])
    assert (rates[absent] == 0).all() and (weights[absent] == 0).all()
    _, per_class = pairwise_rate_reduction(Z, Zh, labels, K)
    assert (per_class[absent] == 0).all()
    # the same batch with compact class ids 0, 1, 2
    compact = torch.tensor([0, 0, 1, 0, 0, 2])[labels]
    assert abs(float(compressed_rate(Z, labels, K) - compressed_rate(Z, compact, 3))) < 1e-12
    T6, _ = ctrl_objective(Z, Zh, labels, K)
    T3, _ = ctrl_objective(Z, Zh, compact, 3)
    assert abs(float(T6 - T3)) < 1e-10


def test_label_and_row_permutation_invariance(gen):
    n, d, K = 80, 48, 4
    labels = balanced_labels(n, K)
    Z, Zh = unit_rows(gen, n, d), unit_rows(gen, n, d)
    T, terms = ctrl_objective(Z, Zh, labels, K)
    rates, _ = class_rates(Z, labels, K)
    # shuffle the rows (features, decoded features and labels together)
    perm = torch.randperm(n, generator=gen)
    T_rows, _ = ctrl_objective(Z[perm], Zh[perm], labels[perm], K)
    assert abs(float(T - T_rows)) < 1e-10
    # rename the classes: per-class rates are permuted, totals unchanged
    sigma = torch.randperm(K, generator=gen)
    T_ids, terms_ids = ctrl_objective(Z, Zh, sigma[labels], K)
    assert abs(float(T - T_ids)) < 1e-10
    assert all(abs(float(terms[k] - terms_ids[k])) < 1e-10 for k in terms)
    rates_ids, _ = class_rates(Z, sigma[labels], K)
    assert (rates_ids[sigma] - rates).abs().max() < 1e-10


# ------------------------------------------------------------------ the game
@pytest.mark.parametrize("n, d", [(10, 64), (40, 16)])
def test_binary_equals_two_class_formulas(gen, n, d):
    """Binary T = R([Z; Zh]) - 1/2 R(Z) - 1/2 R(Zh) is dR of the stacked batch with Z and Zh as the two
    classes, and the pairwise term of a single class."""
    Z, Zh = unit_rows(gen, n, d), unit_rows(gen, n, d)
    T, terms = ctrl_objective(Z, Zh, mode="binary")
    two = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    assert abs(float(T - rate_reduction(torch.cat([Z, Zh]), two, 2).dR)) < 1e-10
    assert abs(float(T - pairwise_rate_reduction(Z, Zh, torch.zeros(n, dtype=torch.long), 1)[0])) < 1e-10
    assert abs(float(terms["R_joint"] - ref_rate(torch.cat([Z, Zh])))) < 1e-10
    assert abs(float(terms["R_Z"] - ref_rate(Z))) < 1e-10 and abs(float(terms["R_Zh"] - ref_rate(Zh))) < 1e-10


@pytest.mark.parametrize("n, d, K", [(30, 64, 3), (400, 32, 4)])
def test_multi_objective_is_the_sum_of_its_parts(gen, n, d, K):
    labels = balanced_labels(n, K)
    Z, Zh = unit_rows(gen, n, d), unit_rows(gen, n, d)
    T, terms = ctrl_objective(Z, Zh, labels, K)
    rz, rh = rate_reduction(Z, labels, K), rate_reduction(Zh, labels, K)
    pw, _ = pairwise_rate_reduction(Z, Zh, labels, K)
    assert abs(float(T - (rz.dR + rh.dR + pw))) < 1e-10
    for key, ref in [("R_Z", rz.R), ("Rc_Z", rz.Rc), ("dR_Z", rz.dR), ("R_Zh", rh.R), ("Rc_Zh", rh.Rc),
                     ("dR_Zh", rh.dR), ("pairwise", pw), ("T", T)]:
        assert abs(float(terms[key] - ref)) < 1e-10, key
    assert abs(float(terms["R_Z"] - ref_rate(Z))) < 1e-10


@pytest.mark.parametrize("mode", ["multi", "binary"])
def test_gradients_match_finite_differences(gen, mode):
    """autograd through the padding/scatter, the Gram choice and the Cholesky vs central differences."""
    for n, d in [(6, 9), (12, 4)]:
        labels = balanced_labels(n, 2)
        Z = unit_rows(gen, n, d).requires_grad_()
        Zh = unit_rows(gen, n, d).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: ctrl_objective(a, b, labels, 2, mode=mode)[0], (Z, Zh))


# ------------------------------------------------------------------ float32 / autocast
def test_float32_gradients_finite_with_small_classes(gen):
    """d = 128 > n_k = 20: class Grams are rank-deficient on the d side; gradients stay finite and agree
    with float64."""
    n, d, K = 100, 128, 5
    labels = balanced_labels(n, K)
    Z64, Zh64 = unit_rows(gen, n, d), unit_rows(gen, n, d)
    for mode in ("multi", "binary"):
        Z, Zh = Z64.float().requires_grad_(), Zh64.float().requires_grad_()
        T, terms = ctrl_objective(Z, Zh, labels, K, mode=mode)
        assert T.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())
        T.backward()
        assert torch.isfinite(Z.grad).all() and torch.isfinite(Zh.grad).all() and Z.grad.abs().max() > 0
        Z2, Zh2 = Z64.clone().requires_grad_(), Zh64.clone().requires_grad_()
        T64, _ = ctrl_objective(Z2, Zh2, labels, K, mode=mode)
        T64.backward()
        assert abs(T.item() - T64.item()) < 1e-3 * abs(T64.item())
        torch.testing.assert_close(Z.grad.double(), Z2.grad, rtol=1e-3, atol=1e-4)
    rates, _ = class_rates(Z64.float().requires_grad_(), labels, K)
    assert torch.isfinite(rates).all()


def test_autocast_does_not_change_the_math(gen):
    """Inside bf16 autocast the logdets still run in float32 (inputs cast up, autocast off): same values
    as outside, float32 results. bf16 inputs are computed in float32 as well."""
    n, d, K = 200, 64, 4
    labels = balanced_labels(n, K)
    Z, Zh = unit_rows(gen, n, d, torch.float32), unit_rows(gen, n, d, torch.float32)
    outside = [ctrl_objective(Z, Zh, labels, K, mode=m)[0] for m in ("multi", "binary")] + [coding_rate(Z)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = [ctrl_objective(Z, Zh, labels, K, mode=m)[0] for m in ("multi", "binary")] + [coding_rate(Z)]
    for a, b in zip(outside, inside):
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)
    zb = Z.bfloat16()
    assert coding_rate(zb).dtype == torch.float32
    assert abs(float(coding_rate(zb)) - float(coding_rate(zb.float()))) < 1e-5


# ------------------------------------------------------------------ Cholesky fallbacks
def test_cholesky_failure_retries_with_jitter_then_slogdet(gen, monkeypatch):
    Z = unit_rows(gen, 30, 12)
    expected = float(ref_rate(Z))
    real = torch.linalg.cholesky_ex
    calls = []

    def fail_first(A):
        calls.append(1)
        L, info = real(A)
        return L, (info + 1) if len(calls) == 1 else info

    monkeypatch.setattr(torch.linalg, "cholesky_ex", fail_first)
    got = float(coding_rate(Z))
    assert len(calls) == 2
    # jitter 1e-6 * trace/m shifts logdet by at most 1e-6 * trace/m * trace(A^-1) / 2 ~ 1e-6 * m
    assert abs(got - expected) < 1e-4

    def always_fail(A):
        L, info = real(A)
        return L, info + 1

    monkeypatch.setattr(torch.linalg, "cholesky_ex", always_fail)
    assert abs(float(coding_rate(Z)) - expected) < 1e-10  # slogdet
    monkeypatch.undo()
    # a genuinely singular PSD matrix: Cholesky fails, the jitter rescues it with a finite value
    A = torch.ones((1, 2, 2), dtype=torch.float64)
    assert torch.isfinite(rate_mod._chol_logdet(A)).all()


# ------------------------------------------------------------------ errors and warnings
def test_errors_are_clear_value_errors(gen):
    n, d = 20, 8
    Z, Zh = unit_rows(gen, n, d), unit_rows(gen, n, d)
    labels = balanced_labels(n, 2)
    bad = Z.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="features are not finite: Z has 1 NaN/inf"):
        ctrl_objective(bad, Zh, labels, 2)
    bad_h = Zh.clone()
    bad_h[0, 0] = float("inf")
    with pytest.raises(ValueError, match="features are not finite: Zh"):
        ctrl_objective(Z, bad_h, mode="binary")
    with pytest.raises(ValueError, match="features are not finite"):
        coding_rate(bad)
    with pytest.raises(ValueError, match="multi mode needs at least 2 classes in the batch"):
        ctrl_objective(Z, Zh, torch.zeros(n, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="multi mode needs labels"):
        ctrl_objective(Z, Zh)
    with pytest.raises(ValueError, match="mode must be one of"):
        ctrl_objective(Z, Zh, labels, 2, mode="supervised")
    with pytest.raises(ValueError, match="must be 2-D"):
        coding_rate(Z[0])
    with pytest.raises(ValueError, match="must be 2-D"):
        coding_rate(Z[None])
    with pytest.raises(ValueError, match="Zh must have Z's shape"):
        pairwise_rate_reduction(Z, Zh[:, :-1], labels, 2)
    with pytest.raises(ValueError, match="Zh must have Z's shape"):
        ctrl_objective(Z, Zh[:-1], mode="binary")
    with pytest.raises(ValueError, match="length n = 20"):
        rate_reduction(Z, labels[:-1], 2)
    with pytest.raises(ValueError, match="1-D"):
        class_rates(Z, labels[:, None], 2)
    with pytest.raises(ValueError, match="integer"):
        class_rates(Z, labels.double(), 2)
    with pytest.raises(ValueError, match=r"\[0, num_classes = 2\)"):
        compressed_rate(Z, labels + 1, 2)
    with pytest.raises(ValueError, match=r"\[0, num_classes"):
        compressed_rate(Z, labels - 1, 2)
    with pytest.raises(ValueError, match="eps2"):
        coding_rate(Z, eps2=0.0)
    with pytest.raises(ValueError, match="floating-point"):
        coding_rate(torch.ones(3, 4, dtype=torch.long))


def test_small_class_warning():
    labels = torch.tensor([0] * 130 + [2] * 128)
    assert small_class_warning(labels, 4, 128) is None  # absent classes 1 and 3 are not "small"
    msg = small_class_warning(torch.tensor([0] * 130 + [2] * 20 + [3] * 5), 4, 128)
    assert msg is not None and "\n" not in msg
    assert "fewer than d = 128" in msg and "classes 2, 3" in msg and "n_k = 5" in msg and "binary" in msg
