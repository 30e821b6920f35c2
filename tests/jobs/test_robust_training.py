"""csc train's robustness options (classifiers): gaussian noise augmentation, lambda jitter and the
label-free lambda rule calibrated into the model file at the end of the run -- against the batches
without them, the layer's own per-sample lambda, and `csc eval --calibrate-lambda`."""

import copy
import math

import pytest
import torch
from safetensors.torch import load_file

import csc_cli
from csc_cli.data.pipeline import Batches, add_noise
from csc_cli.jobs.events import BatchEnd
from csc_cli.jobs.train import TrainConfig, run_train
from csc_cli.jobs.training import LambdaJitter
from csc_cli.layers import CSCConv2d


def test_noise_augmentation_draws_one_sigma_per_image_up_to_the_maximum(gen):
    """Mid-gray images (no clipping at these sigmas): each image's noise has the standard deviation
    drawn for it, within the sampling error of 3072 pixels (relative SE 1/sqrt(2 * 3072) = 1.3%,
    allowed 5 SE), every one at most the maximum, and 256 draws cover [0, max]."""
    x = torch.full((256, 3, 32, 32), 0.5)
    noisy = add_noise(x, 0.1, gen)
    per_image = (noisy - x).flatten(1).std(1)
    tolerance = 5 / math.sqrt(2 * 3072)
    assert float(per_image.max()) <= 0.1 * (1 + tolerance)
    assert float(per_image.min()) < 0.01 and float(per_image.max()) > 0.09  # P(no draw in a 10% end) = 0.9^256
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    again = add_noise(x, 0.1, torch.Generator().manual_seed(1234))
    assert torch.equal(noisy, again)


def test_noisy_batches_are_seeded_resumable_and_off_by_default():
    """With noise 0 the batches are the ones without the option (bit for bit); with noise they are
    the same augmented images plus noise, and a resumed epoch gives the same batches."""
    images, labels = torch.rand(40, 3, 8, 8), torch.arange(40)
    plain = Batches(images, labels, 8, shuffle=True, augment="crop_flip", seed=5)
    off = Batches(images, labels, 8, shuffle=True, augment="crop_flip", seed=5, noise=0.0)
    noisy = Batches(images, labels, 8, shuffle=True, augment="crop_flip", seed=5, noise=0.1)
    for (a, ya), (b, _), (c, yc) in zip(plain.epoch(2), off.epoch(2), noisy.epoch(2)):
        assert torch.equal(a, b) and torch.equal(ya, yc)
        assert not torch.equal(a, c) and float((a - c).abs().max()) < 0.1 * 6  # noise on the same crops
    full = list(noisy.epoch(3))
    resumed = list(noisy.epoch(3, start_batch=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], resumed))
    with pytest.raises(ValueError, match="largest sigma"):
        Batches(images, labels, 8, noise=1.5)


def test_lambda_jitter_gives_each_training_image_its_own_lambda_and_leaves_eval_alone(gen):
    """In training mode the layer solves each image at the lambda drawn for it -- the same code as
    the layer given that per-sample lambda itself; in eval mode, or when a lambda is given, nothing
    changes. The draws depend on the step only."""
    layer = CSCConv2d(3, 6, 3, padding=1).double()
    model = torch.nn.Sequential(layer)
    plain = copy.deepcopy(layer)  # no hook
    step = {"n": 0}
    jitter = LambdaJitter(model, 0.1, 0.5, seed=3, step=lambda: step["n"])
    x = torch.randn(5, 3, 8, 8, generator=gen, dtype=torch.float64)
    lam = jitter.lambdas(5, 0)
    assert lam.min() >= 0.1 and lam.max() <= 0.5 and len(set(lam.tolist())) == 5
    model.train()
    out = model(x)
    layer.eval()
    expected = layer(x, lam=lam)
    assert torch.equal(out, expected)
    plain.train()
    plain(x)  # the same step-size estimate as the trained layer's
    plain.eval()
    assert torch.equal(model(x), plain(x))  # eval: the trained lambda, as without the option
    step["n"] = 1
    assert not torch.equal(jitter.lambdas(5, 1), lam)  # another step, other draws
    assert torch.equal(jitter.lambdas(5, 1), jitter.lambdas(5, 1))
    layer.train()
    given = layer(x, lam=0.2)
    layer.eval()
    assert torch.equal(given, layer(x, lam=0.2))  # an explicit lambda wins
    jitter.remove()
    with pytest.raises(ValueError, match="no"):
        LambdaJitter(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3)), 0.1, 0.2, seed=0, step=lambda: 0)


def _config(out, **extra):
    return TrainConfig(**{**dict(dataset="digits", epochs=2, batch_size=32, max_batches=4, lr=0.05, out=str(out),
                                 seed=2), **extra})


ROBUST = dict(noise_augment=0.08, lambda_jitter=[0.1, 0.4], calibrate_lambda=True, calibration_images=64)


class _Stop(Exception):
    pass


def test_a_robust_run_killed_mid_epoch_resumes_to_the_same_model_file_calibration_included(tmp_path):
    """Noise augmentation, lambda jitter and the end-of-run calibration, killed after step 4 (state at
    step 3) and resumed: the same tensors and the same stored rule as the run never killed."""
    reference = run_train(_config(tmp_path / "ref", **ROBUST))

    def stop(event):
        if isinstance(event, BatchEnd) and event.epoch == 0 and event.batch == 4:
            raise _Stop

    with pytest.raises(_Stop):
        run_train(_config(tmp_path / "run", checkpoint_every=3, **ROBUST), stop)
    resumed = run_train(TrainConfig.from_state(tmp_path / "run" / "state.safetensors"))
    # the first row after a mid-epoch resume says its training terms cover batch 3 on only
    assert resumed.history[0]["train_from_batch"] == 3 and "train_from_batch" not in resumed.history[1]
    assert not any("train_from_batch" in row for row in reference.history)
    a, b = load_file(reference.model_path), load_file(resumed.model_path)
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]
    rule_a = csc_cli.load(reference.model_path).csc_card.lambda_rule
    assert rule_a is not None and rule_a == csc_cli.load(resumed.model_path).csc_card.lambda_rule
    assert reference.calibration["rule"] == rule_a["rule"] and reference.calibration["written_to"] == reference.model_path


def test_the_rule_stored_by_training_is_the_one_csc_eval_calibrate_lambda_stores(tmp_path, cli):
    """The same run without and with --calibrate-lambda trains the same weights; `csc eval` on the
    uncalibrated file with the same images, rule and seed stores exactly the rule training stored."""
    plain = run_train(_config(tmp_path / "plain", seed=4))
    calibrated = run_train(_config(tmp_path / "cal", seed=4, calibrate_lambda=True, calibration_images=64))
    a, b = load_file(plain.model_path), load_file(calibrated.model_path)
    assert not [k for k in a if not torch.equal(a[k], b[k])]
    assert csc_cli.load(plain.model_path).csc_card.lambda_rule is None
    out = tmp_path / "eval.safetensors"
    code, _, err = cli(["eval", plain.model_path, "--calibrate-lambda", "--calibration-images", "64", "--seed", "4",
                        "--out", str(out), "--max-images", "8"])
    assert code == 0, err
    assert csc_cli.load(out).csc_card.lambda_rule == csc_cli.load(calibrated.model_path).csc_card.lambda_rule
    code, output, err = cli(["eval", calibrated.model_path, "--lambda", "auto", "-c", "gaussian_noise",
                             "--severities", "5", "--max-images", "16", "--json"])
    assert code == 0, err  # answers --lambda auto with no separate calibration step


@pytest.mark.parametrize("extra, message", [
    (dict(calibrate_lambda=True, csc="none"), "has none"),
    (dict(lambda_jitter=[0.1, 0.3], csc="none"), "has none"),
    (dict(lambda_jitter=[0.3, 0.1]), "lambda_jitter"),
    (dict(noise_augment=2.0), "noise_augment"),
])
def test_robustness_options_that_cannot_apply_are_refused(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        run_train(_config(tmp_path / "r", **extra))


def test_the_ctrl_game_refuses_the_classifier_robustness_options(tmp_path, cli):
    code, _, err = cli(["train", "digits", "--arch", "ctrl_dcgan32", "--csc", "all", "--lambda-jitter", "0.1,0.3",
                        "--epochs", "1", "--out", str(tmp_path / "ae")])
    assert code != 0 and "classifier options" in err and "Traceback" not in err
    code, _, err = cli(["train", "digits", "--lambda-jitter", "0.1", "--epochs", "1", "--out", str(tmp_path / "x")])
    assert code != 0 and "LO,HI" in err
