"""csc inspect on autoencoders (csc_cli.jobs.ae_inspect): the files of a tiny CSC-CTRL and CTRL model,
the block-diagonal energy ratio on features in orthogonal class subspaces, the class samples, and the
command line."""

import json
import math

import pytest
import torch
from PIL import Image

from csc_cli.jobs.autoencoder.inspect import (AEInspectConfig, block_energy_ratio, class_subspaces, run_ae_inspect,
                                     sample_class, traverse)

FILES = {"reconstructions.png", "class_samples.png", "traversals.png", "zz_heatmap.png", "zzh_heatmap.png",
         "spectra.png", "atoms_encoder.png", "atoms_decoder.png"}


@pytest.fixture(scope="module")
def tiny_aes(tmp_path_factory):
    """CSC-CTRL and CTRL autoencoders (ctrl_dcgan32, d 16) after 2 batches of the game on digits
    (~10 s together): plumbing, not numbers."""
    from csc_cli.jobs.train import TrainConfig, run_train

    out = {}
    for csc in ("all", "none"):
        cfg = TrainConfig(dataset="digits", image_size=32, arch="ctrl_dcgan32", csc=csc, feature_dim=16,
                          batch_size=256, epochs=1, max_batches=2, lr=1e-3, weight_decay=0.0, schedule="linear",
                          min_lr=0.0, augment="none", out=str(tmp_path_factory.mktemp(f"tiny_ae_{csc}")))
        out[csc] = run_train(cfg).model_path
    return out


@pytest.mark.parametrize("csc", ["all", "none"])
def test_every_file_is_a_png_of_a_sensible_size(tiny_aes, tmp_path, csc):
    out = tmp_path / "o"
    r = run_ae_inspect(AEInspectConfig(model=tiny_aes[csc], out=str(out), images=12, features=120,
                                       train_images=400)).to_dict()
    assert {p.split("/")[-1] for p in r["files"]} == FILES
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for path in r["files"]:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and 200 <= im.size[0] <= 4000 and 150 <= im.size[1] <= 4000
    assert r["dataset"] == "digits" and r["test_features"] == 120 and r["train_features"] == 400
    assert r["reconstruction"]["images"] == 12 and 0 <= r["reconstruction"]["mse"] <= 1
    assert len(r["singular_values"]) == 10  # min(10, class size, d 16) values per class
    assert all(1 <= len(v) <= 10 for v in r["singular_values"].values())
    for v in r["singular_values"].values():
        assert all(a >= b - 1e-9 for a, b in zip(v, v[1:]))
    block = r["block_diagonal"]
    assert 0 < block["chance"] < block["zz"] + 0.2 and 0 < block["zz"] <= 1 and 0 < block["zzh"] <= 1
    assert -1 - 1e-6 <= r["self_consistency"] <= 1 + 1e-6
    atoms = r["atoms"]
    assert list(atoms) == ["encoder.conv1", "encoder.conv2", "encoder.conv3", "encoder.conv4",
                           "decoder.deconv1", "decoder.deconv2", "decoder.deconv3", "decoder.deconv4"]
    # CSC-CTRL: every layer a dictionary of a CSC layer but the image's synthesis (a transposed conv)
    assert [name for name, a in atoms.items() if a["csc"]] == ([] if csc == "none" else list(atoms)[:-1])
    assert atoms["encoder.conv1"]["shown_as"] == "grey" and atoms["encoder.conv2"]["shown_as"] == "first channel"
    if csc == "none":  # a transposed conv's pattern per input channel: the last one paints the 1-channel image
        assert atoms["decoder.deconv4"]["shown_as"] == "grey" and atoms["decoder.deconv4"]["atoms"] == 64
    assert any("CTRL" in n for n in r["notes"]) is (csc == "none")
    json.dumps(r)


def test_block_energy_ratio_of_orthogonal_class_subspaces_is_one():
    gen = torch.Generator().manual_seed(0)
    d, classes = 12, 3
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    z, y = [], []
    for k in range(classes):  # class k in span of columns 4k..4k+3
        z.append(torch.randn(20, 4, generator=gen, dtype=torch.float64) @ q[:, 4 * k:4 * k + 4].T)
        y += [k] * 20
    z = torch.nn.functional.normalize(torch.cat(z), dim=1)
    y = torch.tensor(y)
    perm = torch.randperm(60, generator=gen)  # the order does not matter
    assert block_energy_ratio(z[perm], y[perm]) == pytest.approx(1.0, abs=1e-12)
    assert block_energy_ratio(z, y, other=z) == pytest.approx(1.0, abs=1e-12)
    # everything in one direction: the ratio is the share of same-class pairs
    same = torch.ones(60, d, dtype=torch.float64)
    assert block_energy_ratio(same, y) == pytest.approx(3 * 20 * 20 / 60 ** 2)


def test_class_samples_are_unit_vectors_in_the_class_mean_plus_subspace():
    gen = torch.Generator().manual_seed(1)
    d = 10
    centre = torch.nn.functional.normalize(torch.randn(2, d, generator=gen, dtype=torch.float64), dim=1)
    z = torch.cat([centre[k] + 0.2 * torch.randn(50, d, generator=gen, dtype=torch.float64) for k in range(2)])
    y = torch.tensor([0] * 50 + [1] * 50)
    spaces = class_subspaces(z, y, 3, components=3)
    assert spaces[2] is None
    for k in range(2):
        mean, basis, sigma = spaces[k]
        assert basis.shape == (d, 3) and sigma.shape == (3,)
        assert torch.allclose(basis.T @ basis, torch.eye(3, dtype=torch.float64), atol=1e-10)
        assert torch.allclose(mean, z[y == k].mean(0))
        # sigma is the standard deviation along each direction
        proj = (z[y == k] - mean) @ basis
        assert torch.allclose(sigma, proj.std(0, unbiased=True), atol=1e-10)
        samples = sample_class(mean, basis, sigma, 16, torch.Generator().manual_seed(2))
        assert samples.shape == (16, d)
        assert torch.allclose(samples.norm(dim=1), torch.ones(16, dtype=torch.float64), atol=1e-12)
        span, _ = torch.linalg.qr(torch.cat([mean[:, None], basis], dim=1))
        residual = samples - (samples @ span) @ span.T
        assert float(residual.abs().max()) < 1e-10
        again = sample_class(mean, basis, sigma, 16, torch.Generator().manual_seed(2))
        assert torch.equal(samples, again)  # seeded
        walk = traverse(mean, basis, [-0.5, 0.0, 0.5], 3)
        assert walk.shape == (9, d) and torch.allclose(walk.norm(dim=1), torch.ones(9, dtype=torch.float64))
        assert torch.allclose(walk[1], mean / mean.norm())  # t = 0 is the normalised mean


def test_refuses_a_classifier_file(tmp_path):
    import csc_cli
    from csc_cli.checkpoint import save

    path = save(csc_cli.create_model("resnet20_cifar", num_classes=10), tmp_path / "clf.safetensors",
                dataset="cifar10", input_size=[3, 32, 32])
    with pytest.raises(ValueError, match="not an autoencoder"):
        run_ae_inspect(AEInspectConfig(model=str(path), out=str(tmp_path / "o")))


def test_cli_inspect_json_on_an_autoencoder(cli, tiny_aes, tmp_path):
    out = tmp_path / "cli"
    code, stdout, err = cli(["inspect", tiny_aes["all"], "--json", "--out", str(out), "--images", "8",
                             "--features", "100"])
    assert code in (0, None), err
    r = json.loads(stdout)
    assert r["reconstruction"]["images"] == 8 and r["test_features"] == 100
    assert {p.split("/")[-1] for p in r["files"]} == FILES and all((out / f).exists() for f in FILES)
    assert math.isfinite(r["block_diagonal"]["zz"])
    assert r["decoder_image"] == "synthesis"  # the default CSC-CTRL layout (issue 30)
    code, stdout, err = cli(["inspect", tiny_aes["none"], "--out", str(tmp_path / "table"), "--features", "50"])
    assert code in (0, None), err
    assert "block-diagonal" in stdout and "reconstructions.png" in stdout and "(CTRL, d " in stdout


def test_cli_refuses_classifier_options_on_an_autoencoder(cli, tiny_aes, tmp_path):
    code, _, err = cli(["inspect", tiny_aes["all"], "--layer", "encoder.conv1", "--out", str(tmp_path / "o")])
    assert code == 1 and "--layer" in err and "autoencoder" in err and "Traceback" not in err


def test_refuses_an_untrained_autoencoder_in_one_line(tmp_path):
    import csc_cli
    from csc_cli.autoencoders import build_autoencoder

    path = csc_cli.save(build_autoencoder("ctrl_dcgan32", in_chans=1, feature_dim=8), tmp_path / "fresh.safetensors",
                        dataset="digits", input_size=[1, 32, 32])
    with pytest.raises(ValueError, match=r"untrained autoencoder.*csc train digits --init") as info:
        run_ae_inspect(AEInspectConfig(model=str(path), out=str(tmp_path / "o"), features=16))
    assert "\n" not in str(info.value)
