"""csc eval on autoencoders (csc_cli.jobs.ae_eval) and its metrics (csc_cli.metrics), compared with
closed forms (PSNR of a known MSE, SSIM of identical / shifted images, the Frechet distance of
Gaussians), an independent direct SSIM (a per-pixel loop over windows), scikit-learn's PCA /
TruncatedSVD for the nearest-subspace classifier (the CTRL authors' code uses them), and a tiny
CSC-CTRL autoencoder trained on digits."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from csc_cli.metrics import (fid, fid_features, fit_subspaces, frechet_distance, gaussian_window, inception_net,
                             nearest_subspace, psnr, ssim)


# ----------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_of_a_known_mse():
    """PSNR = 10 log10(1 / MSE): a constant error of 0.1 is MSE 0.01, 20 dB."""
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.8
    assert psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-9)
    assert psnr(x, x) == math.inf


def test_ssim_of_identical_images_is_one(gen):
    x = torch.rand(4, 3, 20, 24, generator=gen)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_a_constant_shift_is_the_luminance_term(gen):
    """y = x + c: local variances and covariance are unchanged, so contrast-structure is 1 and
    SSIM = (2 mx (mx + c) + C1) / (mx^2 + (mx + c)^2 + C1); on a constant image mx = a everywhere."""
    a, c = 0.3, 0.2
    x = torch.full((1, 1, 16, 16), a, dtype=torch.float64)
    c1 = 0.01 ** 2
    expected = (2 * a * (a + c) + c1) / (a * a + (a + c) ** 2 + c1)
    assert ssim(x, x + c) == pytest.approx(expected, abs=1e-12)
    # a textured image: the same formula per window, with the window means of x
    x = torch.rand(2, 1, 16, 16, generator=gen, dtype=torch.float64) * 0.5
    mx = torch.nn.functional.conv2d(x, gaussian_window().view(1, 1, 11, 11))
    per = (2 * mx * (mx + c) + c1) / (mx * mx + (mx + c) ** 2 + c1)
    assert ssim(x, x + c) == pytest.approx(float(per.mean()), abs=1e-12)


def _ssim_direct(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. (2004) written out: for every valid 11x11 window position, Gaussian-weighted
    means, variances and covariance, then the SSIM formula; the mean over positions, channels, images."""
    r = np.arange(11) - 5.0
    g = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    n, ch, h, wd = x.shape
    for i in range(n):
        for c in range(ch):
            for u in range(h - 10):
                for v in range(wd - 10):
                    a, b = x[i, c, u:u + 11, v:v + 11], y[i, c, u:u + 11, v:v + 11]
                    ma, mb = (w * a).sum(), (w * b).sum()
                    va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                    cov = (w * (a - ma) * (b - mb)).sum()
                    values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_direct_implementation(gen):
    x = torch.rand(2, 2, 14, 15, generator=gen, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    assert ssim(x, y) == pytest.approx(_ssim_direct(x.numpy(), y.numpy()), abs=1e-10)
    assert ssim(x.float(), y.float(), batch_size=1) == pytest.approx(_ssim_direct(x.numpy(), y.numpy()), abs=1e-6)


def test_ssim_refuses_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


# ----------------------------------------------------------------------------- nearest subspace
def _orthogonal_classes(gen, classes=4, dim=10, d=48, per=30):
    """Class k's features lie in span(Q[:, k*dim:(k+1)*dim]): mutually orthogonal subspaces."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    feats, labels = [], []
    for k in range(classes):
        coeff = torch.randn(per, dim, generator=gen, dtype=torch.float64)
        feats.append(coeff @ q[:, k * dim:(k + 1) * dim].T)
        labels.append(torch.full((per,), k))
    z = torch.cat(feats)
    return torch.nn.functional.normalize(z, dim=1), torch.cat(labels), q


@pytest.mark.parametrize("centred", [True, False])
def test_nearest_subspace_on_orthogonal_subspaces_is_exact(gen, centred):
    z, y, q = _orthogonal_classes(gen)
    spaces = fit_subspaces(z[::2], y[::2], 4, components=10, centred=centred)
    assert [b.shape[1] for b in spaces.bases] == [10] * 4  # each class spans exactly 10 dimensions
    pred, res = nearest_subspace(spaces, z[1::2])
    assert bool((pred == y[1::2]).all())
    assert float(res[torch.arange(res.shape[0]), y[1::2]].max()) < 1e-12  # in its own subspace
    # a rotated copy of everything (train and test): the same predictions, residuals unchanged
    rot, _ = torch.linalg.qr(torch.randn(48, 48, generator=gen, dtype=torch.float64))
    spaces_r = fit_subspaces(z[::2] @ rot, y[::2], 4, components=10, centred=centred)
    pred_r, res_r = nearest_subspace(spaces_r, z[1::2] @ rot)
    assert bool((pred_r == y[1::2]).all())
    assert torch.allclose(res, res_r, atol=1e-9)


def test_nearest_subspace_matches_sklearn_pca_and_truncated_svd(gen):
    """The CTRL authors' nearsub: sklearn PCA (centred) and TruncatedSVD (uncentred) per class."""
    sk = pytest.importorskip("sklearn.decomposition")
    z = torch.nn.functional.normalize(torch.randn(120, 12, generator=gen, dtype=torch.float64), dim=1)
    y = torch.arange(120) % 3
    test = torch.nn.functional.normalize(torch.randn(40, 12, generator=gen, dtype=torch.float64), dim=1).numpy()
    for centred in (True, False):
        spaces = fit_subspaces(z, y, 3, components=4, centred=centred)
        _, res = nearest_subspace(spaces, torch.from_numpy(test))
        for k in range(3):
            zk = z[y == k].numpy()
            if centred:
                fit = sk.PCA(n_components=4).fit(zk)
                u, mean = fit.components_.T, zk.mean(0)
            else:
                u, mean = sk.TruncatedSVD(n_components=4, algorithm="arpack").fit(zk).components_.T, 0
            expect = np.linalg.norm((np.eye(12) - u @ u.T) @ (test - mean).T, axis=0)
            np.testing.assert_allclose(res[:, k].numpy(), expect, atol=1e-8)


def test_subspace_dims_capped_by_class_size_and_dimension(gen):
    z = torch.randn(7, 5, generator=gen)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    spaces = fit_subspaces(z, y, 3, components=10, centred=False)
    assert [None if b is None else b.shape[1] for b in spaces.bases] == [3, 4, None]
    pred, res = nearest_subspace(spaces, z)
    assert bool(torch.isinf(res[:, 2]).all()) and int(pred.max()) <= 1


# ----------------------------------------------------------------------------- FID
class _Flatten(nn.Module):
    """A stand-in feature network: the image's values are its features (plus an unused parameter
    for a device)."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.flatten(1)


def test_fid_of_a_set_with_itself_is_zero(gen):
    net = _Flatten()
    images = torch.rand(64, 1, 3, 3, generator=gen)
    f = fid_features(images, net, prepare=None, batch_size=10)
    assert f.shape == (64, 9) and f.dtype == torch.float64
    assert abs(fid(f, f)) < 1e-6


def _exact_samples(mu, cov, n, gen):
    """n samples whose sample mean is mu and sample covariance (n - 1) is cov, exactly."""
    x = torch.randn(n, mu.size, generator=gen, dtype=torch.float64).numpy()
    x = x - x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T  # sample covariance I
    return x @ np.linalg.cholesky(cov).T + mu


def test_fid_of_two_gaussians_is_the_closed_form(gen):
    """Diagonal covariances: FID = ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2; general ones:
    against scipy's sqrtm; through fid_features and the stand-in network, on sample sets with
    exactly those means and covariances."""
    d = 4
    mu1, mu2 = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.0, -0.1, 0.5, 0.4])
    a, b = np.array([1.0, 0.5, 0.2, 2.0]), np.array([0.3, 0.5, 1.0, 0.1])
    closed = float(np.square(mu1 - mu2).sum() + np.square(np.sqrt(a) - np.sqrt(b)).sum())
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(closed, rel=1e-12)
    x1 = _exact_samples(mu1, np.diag(a), 50, gen)
    x2 = _exact_samples(mu2, np.diag(b), 80, gen)
    net = _Flatten()
    f1 = fid_features(torch.from_numpy(x1).view(-1, 1, 2, 2), net, prepare=None)
    f2 = fid_features(torch.from_numpy(x2).view(-1, 1, 2, 2), net, prepare=None)
    assert fid(f1, f2) == pytest.approx(closed, rel=1e-9)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    m1 = torch.randn(d, d, generator=gen, dtype=torch.float64).numpy()
    m2 = torch.randn(d, d, generator=gen, dtype=torch.float64).numpy()
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(d), m2 @ m2.T + 0.1 * np.eye(d)
    ref = float(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_bad_fid_weights_are_one_clear_error(tmp_path):
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"not a weights file")
    with pytest.raises(ValueError, match="not a readable weights file"):
        inception_net(garbage)
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.zeros(2, 2)}, str(wrong))
    with pytest.raises(ValueError, match="not an Inception-v3 state dict"):
        inception_net(wrong)
    with pytest.raises(ValueError, match="is not a file"):
        inception_net(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- the job
@pytest.fixture(scope="session")
def tiny_ae(tmp_path_factory):
    """A CSC-CTRL autoencoder (ctrl_dcgan32, d 16) after 2 batches of the game on digits (~15 s).
    Too short to reconstruct (its decoder outputs a constant): good for plumbing, not for numbers."""
    from csc_cli.jobs.train import TrainConfig, run_train

    cfg = TrainConfig(dataset="digits", image_size=32, arch="ctrl_dcgan32", csc="all", feature_dim=16, batch_size=256,
                      epochs=1, max_batches=2, lr=1e-3, weight_decay=0.0, schedule="linear", min_lr=0.0,
                      augment="none", out=str(tmp_path_factory.mktemp("tiny_ae")))
    return run_train(cfg).model_path


def test_job_on_a_tiny_autoencoder(tiny_ae, tmp_path):
    from csc_cli.checkpoint import load
    from csc_cli.jobs.autoencoder.evaluate import AEEvalConfig, run_ae_eval
    from csc_cli.layers import csc_layers

    grid = [0.0, 0.1, 0.5]
    out = run_ae_eval(AEEvalConfig(model=tiny_ae, n=64, lambda_grid=grid, csv=str(tmp_path / "sweep.csv"))).to_dict()
    assert set(out) >= {"model", "dataset", "transfer", "images", "reconstruction", "rate", "nearest_subspace",
                        "denoising", "fid", "notes", "files"}
    assert out["dataset"] == "digits" and out["images"] == 64 and out["transfer"] is False and out["fid"] is None
    rec = out["reconstruction"]
    assert all(math.isfinite(rec[k]) for k in ("mse", "psnr", "ssim"))
    assert rec["psnr"] == pytest.approx(10 * math.log10(1 / rec["mse"]), rel=1e-9)
    assert -1 <= rec["ssim"] <= 1
    rate = out["rate"]
    assert rate["dR"] == pytest.approx(rate["R"] - rate["Rc"], abs=1e-9) and rate["dR"] >= 0
    ns = out["nearest_subspace"]
    assert ns["train_images"] == 1438 and ns["components"] == 10
    assert 0 <= ns["centred"] <= 1 and 0 <= ns["uncentred"] <= 1
    assert all(v == 10 for v in ns["centred_dims"])  # min(10, class size, d 16)
    den = out["denoising"]
    assert den["layers"] == ["encoder.conv1", "encoder.conv2", "encoder.conv3", "encoder.conv4"]
    assert [r["lambda"] for r in den["rows"]] == grid
    assert all(math.isfinite(r["psnr"]) for r in den["rows"]) and math.isfinite(den["trained"]["psnr"])
    assert 19.9 < den["noisy_input_psnr"] < 26  # sigma 0.1 is 20 dB; clamping to [0, 1] only removes error
    rows = (tmp_path / "sweep.csv").read_text().splitlines()
    assert rows[0] == "noise,lambda,psnr,ssim" and len(rows) == 2 + 1 + len(grid)
    # the file's lambdas are the trained ones
    model = load(tiny_ae)
    assert den["trained_lambdas"] == {n: float(m.lam) for n, m in csc_layers(model).items() if n.startswith("encoder.")}


def test_lambda_sweep_restores_the_trained_lambdas_and_changes_the_codes(tiny_ae):
    from csc_cli.checkpoint import load
    from csc_cli.data.source import open_split
    from csc_cli.jobs.autoencoder.evaluate import AEEvalConfig, _denoising
    from csc_cli.jobs.autoencoder.train import features_of
    from csc_cli.layers import csc_layers

    model = load(tiny_ae)
    layers = csc_layers(model)
    for name, layer in layers.items():  # distinct lambdas per layer, to see each one restored
        layer.lam = 0.05 + 0.01 * len(name)
    before = {n: float(m.lam) for n, m in layers.items()}
    x, _ = open_split("digits", "test", image_size=32).take(torch.arange(32))
    z0, _ = features_of(model, x)
    seen = []
    import csc_cli.jobs.autoencoder.evaluate as job

    real = job.features_of

    codes = []

    def spy(m, images, *args, **kwargs):
        seen.append({n: float(l.lam) for n, l in layers.items()})
        z, recon = real(m, images, *args, **kwargs)
        codes.append(z)
        return z, recon

    job.features_of = spy
    try:
        out = _denoising(model, AEEvalConfig(model=tiny_ae, lambda_grid=[0.0, 0.3]), x, torch.device("cpu"),
                         lambda e: None)
    finally:
        job.features_of = real
    assert {n: float(m.lam) for n, m in layers.items()} == before
    assert out["trained_lambdas"] == {n: v for n, v in before.items() if n.startswith("encoder.")}
    # during the sweep: every encoder layer at the grid's value, the decoder's untouched
    for snapshot, lam in zip(seen[1:], [0.0, 0.3]):
        for n, v in snapshot.items():
            assert v == pytest.approx(lam if n.startswith("encoder.") else before[n])
    assert not torch.allclose(codes[0], codes[2])  # lambda 0.3 on the encoder changes its features
    z1, _ = features_of(model, x)
    assert torch.equal(z0, z1)


def test_lambda_rule_for_the_encoder_is_calibrated_stored_and_applied_per_input(tiny_ae, tmp_path, cli):
    from csc_cli.checkpoint import load
    from csc_cli.jobs.autoencoder.evaluate import AEEvalConfig, run_ae_eval
    from csc_cli.layers import csc_layers
    from csc_cli.robust.rules import RULES, SigmaRule, rule_from_dict

    target = tmp_path / "cal.safetensors"
    out = run_ae_eval(AEEvalConfig(model=tiny_ae, n=32, lambda_grid=[0.05, 0.2, 0.6], calibrate_lambda=True,
                                   rule="sigma", calibration_images=48, out=str(target))).to_dict()
    cal = out["calibration"]
    assert cal["rule"] == "sigma" and cal["written_to"] == str(target) and set(cal["rules"]) == set(RULES)
    assert [lv["noise"] for lv in cal["levels"]] == [0.0, 0.05, 0.1, 0.2, 0.3]
    sigmas = [lv["sigma"] for lv in cal["levels"]]  # the estimate grows with the added noise
    assert sigmas == sorted(sigmas) and sigmas[-1] > 3 * sigmas[1]
    encoder = ["encoder.conv1", "encoder.conv2", "encoder.conv3", "encoder.conv4"]
    model = load(target)
    stored = rule_from_dict(model.csc_card.lambda_rule)
    assert isinstance(stored, SigmaRule) and stored.layer == encoder[0] and stored.shared_with == encoder[1:]
    auto = out["denoising"]["auto"]
    assert set(auto) == set(RULES) and [n for n, v in auto.items() if v["stored"]] == ["sigma"]  # all side by side
    assert all(math.isfinite(auto["sigma"][k]) for k in ("psnr", "ssim", "clean_psnr", "clean_ssim"))
    # applied: every encoder layer gets the same per-sample lambda, computed from the first one's input
    layers = csc_layers(model)
    seen = {}
    x = torch.rand(6, 1, 32, 32)
    x[3:] = (x[3:] + 0.3 * torch.randn(3, 1, 32, 32)).clamp(0, 1)
    with torch.no_grad(), stored.applied(model):  # spies registered after the rule's hooks see what they pass
        handles = [layers[n].register_forward_pre_hook(lambda m, a, k, n=n: seen.__setitem__(n, k["lam"]),
                                                       with_kwargs=True) for n in encoder]
        model.encode(x)
    for h in handles:
        h.remove()
    assert set(seen) == set(encoder) and seen[encoder[0]].shape == (6,)
    assert all(torch.equal(seen[n], seen[encoder[0]]) for n in encoder)
    # the file then reports its stored rule next to the trained lambdas and the oracle
    again = run_ae_eval(AEEvalConfig(model=str(target), n=32, lambda_grid=[0.05, 0.2, 0.6])).to_dict()
    assert list(again["denoising"]["auto"]) == ["sigma"]
    assert again["denoising"]["auto"]["sigma"]["psnr"] == pytest.approx(auto["sigma"]["psnr"], abs=1e-9)
    code, _, err = cli(["eval", tiny_ae, "--calibrate-lambda", "--out", str(target), "--in-place"])
    assert code == 1 and "either --out or --in-place" in err


def test_transfer_converts_gray_and_rgb(tiny_ae):
    from csc_cli.jobs.autoencoder.evaluate import AEEvalConfig, _fit, run_ae_eval

    out = run_ae_eval(AEEvalConfig(model=tiny_ae, data="fake", n=8, lambda_grid=[0.1])).to_dict()
    assert out["transfer"] and out["images"] == 8 and any("BT.601" in n for n in out["notes"])
    rgb = torch.rand(2, 3, 32, 32)
    gray = _fit(rgb, 1, 32, "rgb", convert=True)
    torch.testing.assert_close(gray[:, 0], 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])
    assert torch.equal(_fit(gray, 3, 32, "gray", convert=True), gray.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="4-channel images and the model reads 1-channel"):
        _fit(torch.rand(1, 4, 32, 32), 1, 32, "rgba", convert=True)


def test_images_are_resized_to_the_model_and_channels_checked():
    from csc_cli.jobs.autoencoder.evaluate import _fit

    x = torch.rand(2, 1, 16, 16)
    y = _fit(x, 1, 32, "small")
    assert y.shape == (2, 1, 32, 32) and 0 <= float(y.min()) and float(y.max()) <= 1
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=0.02)  # bilinear keeps the mean
    assert _fit(y, 1, 32, "same") is y
    with pytest.raises(ValueError, match="small has 1-channel images and the model reads 3-channel"):
        _fit(x, 3, 32, "small")


def test_refuses_a_classifier_file(tmp_path):
    import csc_cli
    from csc_cli.checkpoint import save
    from csc_cli.jobs.autoencoder.evaluate import AEEvalConfig, run_ae_eval

    model = csc_cli.create_model("resnet20_cifar", num_classes=10)
    path = save(model, tmp_path / "clf.safetensors", dataset="cifar10", input_size=[3, 32, 32])
    with pytest.raises(ValueError, match="not an autoencoder"):
        run_ae_eval(AEEvalConfig(model=str(path)))


# ----------------------------------------------------------------------------- the command line
def test_cli_eval_json_on_an_autoencoder(cli, tiny_ae, tmp_path):
    code, out, err = cli(["eval", tiny_ae, "--n", "40", "--lambda-grid", "0.1,0.2", "--noise", "0.2", "--json",
                          "--csv", str(tmp_path / "s.csv")])
    assert code in (0, None), err
    result = json.loads(out)
    assert result["images"] == 40 and result["denoising"]["noise"] == 0.2
    assert [r["lambda"] for r in result["denoising"]["rows"]] == [0.1, 0.2]
    assert result["files"] == [str(tmp_path / "s.csv")]
    code, out, err = cli(["eval", tiny_ae, "--n", "20", "--lambda-grid", "0.1"])
    assert code in (0, None), err
    assert "PSNR" in out and "nearest subspace" in out and "Denoising" in out


@pytest.mark.parametrize("args,flag", [(["-c", "gaussian_noise"], "--corruptions"),
                                       (["--lambda-sweep", "0.1,0.2"], "--lambda-sweep"),
                                       (["--lambda", "0.3"], "--lambda")])
def test_cli_refuses_classifier_options_on_an_autoencoder(cli, tiny_ae, args, flag):
    code, out, err = cli(["eval", tiny_ae, *args])
    assert code == 1
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert flag in err and "autoencoder" in err and "Traceback" not in err
    assert len(" ".join(lines)) < 400


def test_cli_refuses_autoencoder_options_on_a_classifier(cli, tmp_path):
    import csc_cli
    from csc_cli.checkpoint import save

    path = save(csc_cli.create_model("resnet20_cifar", num_classes=10), tmp_path / "clf.safetensors",
                dataset="cifar10", input_size=[3, 32, 32])
    code, _, err = cli(["eval", str(path), "--noise", "0.2", "--lambda-grid", "0.1"])
    assert code == 1 and "--noise, --lambda-grid: autoencoder options" in err and "Traceback" not in err


def test_fid_in_the_job_with_an_inception_state_dict(tiny_ae, tmp_path):
    """The whole --fid-weights path on a randomly initialised Inception-v3 (nothing downloaded):
    2048-d features, a finite non-negative FID of the reconstructions."""
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    from csc_cli.jobs.autoencoder.evaluate import AEEvalConfig, run_ae_eval

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    weights = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    out = run_ae_eval(AEEvalConfig(model=tiny_ae, n=6, lambda_grid=[0.1], fid_weights=str(weights),
                                   train_images=100)).to_dict()
    assert out["fid"]["features"] == 2048 and out["fid"]["images"] == 6
    assert math.isfinite(out["fid"]["fid"]) and out["fid"]["fid"] >= 0
    assert any("FID on 6 images" in note for note in out["notes"])


def test_attack_refuses_an_autoencoder_in_one_line(cli, tiny_ae, tmp_path):
    """csc attack attacks classifiers: an autoencoder file gets one line and exit 1."""
    code, out, err = cli(["attack", str(tiny_ae), "--preset", "quick", "--n", "4"])
    text = out + err
    assert code == 1 and "is an autoencoder: csc attack attacks classifiers" in text and "Traceback" not in text
    assert len(text.strip().splitlines()) <= 3  # the error line (wrapped at most once or twice), no table


def test_eval_refuses_an_untrained_autoencoder_in_one_line(cli, tmp_path):
    """A model file whose BatchNorm layers never saw data (here: built, not trained) would score
    zero features; eval says so and what to do instead."""
    import csc_cli
    from csc_cli.autoencoders import build_autoencoder
    from csc_cli.jobs.autoencoder.evaluate import AEEvalConfig, run_ae_eval

    path = csc_cli.save(build_autoencoder("ctrl_dcgan32", in_chans=1, feature_dim=8), tmp_path / "fresh.safetensors",
                        dataset="digits", input_size=[1, 32, 32])
    with pytest.raises(ValueError, match="untrained autoencoder"):
        run_ae_eval(AEEvalConfig(model=str(path), n=16, device="cpu"))
    code, out, err = cli(["eval", str(path), "--n", "16"])
    assert code not in (0, None) and "untrained autoencoder" in out + err and "csc train digits --init" in out + err
    assert "Traceback" not in out + err
