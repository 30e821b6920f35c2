"""csc eval: scores, corruption tables, mCE, test-time lambda (fixed / oracle / auto), files, bad input."""

import json

import numpy as np
import pytest
import torch

import csc_cli
from csc_cli.jobs.classifier.evaluate import EvalConfig, _mce, run_eval, scores
from csc_cli.jobs.train import TrainConfig, run_train
from csc_cli.robust import RULES, SigmaRule, lambda_override, rule_from_dict


@pytest.fixture
def digits_model(digits_sdnet):
    """SDNet on digits: `csc train`'s default run (conftest)."""
    return digits_sdnet


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    return run_train(TrainConfig(epochs=1, csc="none", max_batches=4, out=str(out))).model_path


def test_scores_against_a_hand_computation():
    logits = torch.tensor([[3.0, 1, 0, 0, 0, 0], [0, 2, 1, 0, 0, 0], [0, 1, 2, 3, 4, 5], [1, 0.5, 0, 0, 0, 0]])
    labels = torch.tensor([0, 2, 0, 1])
    s = scores(logits, labels, 6)
    assert s["top1"] == 0.25 and s["top5"] == 0.75  # row 2: label 0 is the smallest of 6 logits
    assert s["per_class"][:3] == [0.5, 0.0, 0.0] and s["per_class"][3] is None
    assert s["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))


def test_mce_is_hendrycks_definition():
    table = {"accuracy": {"fog": {"1": 0.8, "2": 0.6}}, "mean_accuracy": 0.7}
    base = {"accuracy": {"fog": {"1": 0.7, "2": 0.5}}, "mean": {"fog": 0.6}, "mean_accuracy": 0.6}
    out = _mce(table, base, clean_acc=0.9, base_clean=0.8)
    assert out["baseline_mean"] == {"fog": 0.6} and out["baseline_accuracy"]["fog"]["2"] == 0.5
    assert out["mce"] == pytest.approx((0.2 + 0.4) / (0.3 + 0.5))
    assert out["relative_mce"] == pytest.approx(((0.2 - 0.1) + (0.4 - 0.1)) / ((0.3 - 0.2) + (0.5 - 0.2)))


def test_lambda_override_restores():
    model = csc_cli.models.build_model("resnet20_cifar", 10, csc="all")
    with lambda_override(model, {"conv1": 0.7, "layer1.0.conv1": 0.3}):
        assert float(model.conv1.lam) == pytest.approx(0.7)
    assert float(model.conv1.lam) == pytest.approx(0.1) and float(model.layer1[0].conv1.lam) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not a CSC layer"):
        with lambda_override(model, {"fc": 0.5}):
            pass


def test_clean_eval_and_lambda_scale(digits_model):
    base = run_eval(EvalConfig(model=digits_model))
    assert base.clean["top1"] > 0.8 and base.images == 359 and base.lam["mode"] == "as trained"
    big = run_eval(EvalConfig(model=digits_model, lambda_scale=30.0))
    assert big.lam["values"] == {"conv1": pytest.approx(3.0)}
    assert big.clean["top1"] < base.clean["top1"]  # a far too large lambda wipes the codes out
    same = run_eval(EvalConfig(model=digits_model, lam="conv1=0.1"))
    assert same.clean["top1"] == base.clean["top1"]
    assert float(csc_cli.load(digits_model).conv1.lam) == pytest.approx(0.1)  # the file is untouched


def test_corruptions_sweep_and_files(digits_model, tmp_path, cli):
    code, out, err = cli(["eval", digits_model, "-c", "gaussian_noise,contrast", "--severities", "1,5",
                          "--lambda-sweep", "0.1:0.5:0.2", "--max-images", "120", "--json",
                          "--csv", str(tmp_path / "r.csv"), "--plots", str(tmp_path / "figs")])
    assert code == 0, err
    r = json.loads(out)
    table = r["corruptions"]
    assert set(table["accuracy"]) == {"gaussian_noise", "contrast"} and set(table["accuracy"]["contrast"]) == {"1", "5"}
    assert table["accuracy"]["gaussian_noise"]["5"] <= table["accuracy"]["gaussian_noise"]["1"] + 0.05
    assert r["sweep"]["grid"] == [0.1, 0.3, 0.5] and "oracle" in table
    oracle = table["oracle"]["accuracy"]["gaussian_noise"]["5"]
    assert oracle == max(r["sweep"]["accuracy"]["gaussian_noise"]["5"]) >= table["accuracy"]["gaussian_noise"]["5"]
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0] == "kind,corruption,severity,mode,lambda,accuracy" and any(x.startswith("sweep,") for x in rows)
    for name in ("accuracy_vs_severity.png", "accuracy_vs_lambda.png", "best_lambda_vs_error.png"):
        assert (tmp_path / "figs" / name).read_bytes()[:4] == b"\x89PNG"


def test_calibrated_rule_round_trips_through_the_model_file(digits_model, tmp_path):
    target = tmp_path / "calibrated.safetensors"
    r = run_eval(EvalConfig(model=digits_model, calibrate_lambda=True, calibration_images=128, rule="sigma",
                            lambda_sweep=[0.1, 0.3, 0.6], out=str(target), max_images=100))
    cal = r.calibration
    assert len(cal["levels"]) == 6 and cal["written_to"] == str(target) and cal["rule"] == "sigma"
    assert [lv["severity"] for lv in cal["levels"]] == [0, 1, 2, 3, 4, 5]
    assert set(cal["rules"]) == set(RULES) and cal["selection"] is None and cal["images"] == 128
    # the noise estimate of the stem's input grows with the Gaussian noise of the calibration levels
    sigmas = [lv["sigma"] for lv in cal["levels"]]
    assert sigmas == sorted(sigmas) and sigmas[-1] > 3 * sigmas[0]
    stored = rule_from_dict(csc_cli.load(target).csc_card.lambda_rule)
    assert isinstance(stored, SigmaRule) and stored.fitted_on == ["gaussian_noise"]
    assert (stored.a, stored.b, stored.layer) == (pytest.approx(cal["rules"]["sigma"]["a"]),
                                                  pytest.approx(cal["rules"]["sigma"]["b"]), "conv1")
    auto = run_eval(EvalConfig(model=str(target), lam="auto", corruptions=["gaussian_noise", "shot_noise"],
                               severities=[5], max_images=100))
    assert auto.lam["mode"] == "auto" and auto.lam["rule"]["a"] == pytest.approx(stored.a)
    assert auto.corruptions["protocol"]["fitted"] == ["gaussian_noise"]
    assert auto.corruptions["protocol"]["unseen"] == ["shot_noise"]
    side = run_eval(EvalConfig(model=str(target), corruptions=["gaussian_noise", "shot_noise"], severities=[5],
                               max_images=100, lambda_sweep=[0.1, 0.3]))
    assert {"oracle", "auto", "protocol"} <= set(side.corruptions)  # the three modes side by side
    assert list(side.corruptions["auto"]) == ["sigma"] and side.corruptions["auto"]["sigma"]["stored"]
    assert (side.corruptions["auto"]["sigma"]["accuracy"]["gaussian_noise"]["5"]
            == auto.corruptions["accuracy"]["gaussian_noise"]["5"])
    modes = side.corruptions["protocol"]["modes"]
    assert set(modes) == {"base", "oracle", "auto:sigma"} and modes["oracle"]["clean"] is None
    assert "TEST labels" in modes["oracle"]["label"]
    assert modes["auto:sigma"]["fitted"] == side.corruptions["auto"]["sigma"]["mean"]["gaussian_noise"]
    assert modes["auto:sigma"]["unseen"] == side.corruptions["auto"]["sigma"]["mean"]["shot_noise"]
    assert modes["auto:sigma"]["clean"] == pytest.approx(auto.clean["top1"], abs=1e-6)  # the same 100 images


def test_rule_best_is_chosen_on_held_out_training_images(digits_model, tmp_path, cli):
    code, out, err = cli(["eval", digits_model, "--calibrate-lambda", "--calibration-images", "96",
                          "--lambda-sweep", "0.1,0.4,0.8", "-c", "gaussian_noise,impulse_noise", "--severities", "3",
                          "--max-images", "60", "--out", str(tmp_path / "c.safetensors"), "--json"])
    assert code == 0, err
    r = json.loads(out)
    cal = r["calibration"]
    assert cal["images"] == 48 and cal["held_out_images"] == 48
    assert set(cal["selection"]) == set(RULES) and cal["rule"] == max(cal["selection"], key=cal["selection"].get)
    assert rule_from_dict(csc_cli.load(tmp_path / "c.safetensors").csc_card.lambda_rule).kind == cal["rule"]
    table = r["corruptions"]
    assert set(table["auto"]) == set(RULES) and [k for k, v in table["auto"].items() if v["stored"]] == [cal["rule"]]
    assert set(table["protocol"]["modes"]) == {"base", "oracle"} | {f"auto:{k}" for k in RULES}
    assert table["protocol"]["unseen"] == ["impulse_noise"]
    code, _, err = cli(["eval", digits_model, "--calibrate-lambda", "--rule", "magic"])
    assert code != 0 and "magic" in err


def test_reads_a_cifar10_c_folder(tmp_path):
    model = run_train(TrainConfig(dataset="fake", epochs=1, max_batches=2, out=str(tmp_path / "m"))).model_path
    folder = tmp_path / "C"
    folder.mkdir()
    gen = np.random.default_rng(0)
    np.save(folder / "fog.npy", gen.integers(0, 256, (5 * 20, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "labels.npy", gen.integers(0, 10, (5 * 20,), dtype=np.uint8))
    r = run_eval(EvalConfig(model=model, corruptions=["fog"], corruption_dir=str(folder)))
    assert set(r.corruptions["accuracy"]["fog"]) == {"1", "2", "3", "4", "5"} and r.corruptions["preset"] == "files"
    np.save(folder / "fog.npy", gen.integers(0, 256, (7, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 array"):
        run_eval(EvalConfig(model=model, corruptions=["fog"], corruption_dir=str(folder)))
    with pytest.raises(FileNotFoundError, match="contrast.npy"):
        run_eval(EvalConfig(model=model, corruptions=["contrast"], corruption_dir=str(folder)))


@pytest.mark.parametrize(
    "args, message",
    [
        (["-c", "fire"], "unknown corruption 'fire'"),
        (["-c", "fog", "--severities", "6"], "severity must be an integer from 1 to 5"),
        (["--lambda", "auto"], "--calibrate-lambda"),
        (["--lambda", "lots"], "--lambda must be"),
    ],
)
def test_bad_input_is_one_line(digits_model, args, message, cli):
    code, _, err = cli(["eval", digits_model, "--max-images", "20"] + args)
    assert code == 1 and message in err and "Traceback" not in err


def test_lambda_on_a_model_without_csc_layers(plain_model, cli):
    code, _, err = cli(["eval", plain_model, "--lambda", "0.5", "--max-images", "20"])
    assert code == 1 and "no CSC layer" in err
    code, _, err = cli(["eval", "missing.safetensors"])
    assert code == 1 and "does not exist" in err


@pytest.mark.slow
def test_raising_lambda_on_heavy_gaussian_noise_changes_predictions_without_significant_harm(cifar_mini_models):
    """PAPER.md: raising the first layer's lambda at test time makes SDNet more robust to noise. On
    a ResNet-20 SDNet of a few epochs the gain is not stable enough to assert: paired on all 1017
    test images at gaussian severities 3-5, lambda 0.2 against the trained 0.1, three 6-epoch models
    of the same recipe measured 104 fixed / 49 broken (p ~ 1e-5), 123 / 65 and 62 / 52 (p = 0.2) --
    another floating-point path is another model; the 4-epoch fixture 129 / 67 (two threads) and
    106 / 54 (one thread). (The gain is measured where it is stable, on 30-epoch
    models: benchmarks/RESULTS.md.) What holds on every path, and is asserted: the raise changes
    predictions, and it does no significant harm -- a one-sided exact sign test of "broken > fixed"
    stays above p = 0.001, a margin set by how many predictions changed, not a number of points.
    (lambda 0.5 on the digits SDNet breaks 310 of 359 test images: the test can fail.)"""
    from csc_cli.data import load_dataset
    from csc_cli.data.corruptions import corrupt
    from csc_cli.jobs.common import predict
    from csc_cli.robust.lam import first_csc_layer
    from csc_cli.robust.stats import sign_test
    from tests.conftest import CIFAR_MINI

    model = csc_cli.load(cifar_mini_models["stem"].model_path).eval()
    test = load_dataset("cifar10", "test", CIFAR_MINI)
    layer = first_csc_layer(model)
    fixed = broken = 0
    for severity in (3, 4, 5):
        x = corrupt(test.images, "gaussian_noise", severity, seed=0)
        trained = predict(model, x, torch.device("cpu")).argmax(1) == test.labels  # all 1017: the gain's spread
        with lambda_override(model, {layer: 0.2}):
            raised = predict(model, x, torch.device("cpu")).argmax(1) == test.labels
        fixed += int((raised & ~trained).sum())
        broken += int((trained & ~raised).sum())
    harm = sign_test(broken, fixed)
    print(f"cifar10-mini gaussian noise s3-5, lambda 0.2 vs 0.1 on {3 * len(test.labels)} images: "
          f"{fixed} fixed, {broken} broken; sign test for a gain p = {sign_test(fixed, broken):.2g}, for harm {harm:.2g}")
    assert fixed + broken >= 30  # the raise reaches the predictions (~1% of the images)
    assert harm >= 0.001, (fixed, broken, harm)


@pytest.mark.slow
def test_eval_sweeps_lambda_and_the_stem_residual_grows_with_noise(cifar_mini_models):
    """csc eval's sweep on the cifar10-mini SDNet: one accuracy per lambda and level, the oracle is
    the curve's maximum, the stem's residual grows with the
    noise (paired on the same images: the noise energy steps are far above their spread), and the
    conv-stem baseline gives an mCE for the corruptions asked."""
    sdnet, resnet = cifar_mini_models["stem"].model_path, cifar_mini_models["none"].model_path
    grid = [0.1, 0.2, 0.3, 0.4, 0.6]
    r = run_eval(EvalConfig(model=sdnet, data_dir=str(__import__("tests.conftest").conftest.CIFAR_MINI),
                            corruptions=["gaussian_noise", "contrast"], severities=[1, 3, 5], lambda_sweep=grid,
                            baseline=resnet, max_images=300))
    curve = r.sweep["accuracy"]["gaussian_noise"]["5"]
    assert len(curve) == len(grid) and r.sweep["oracle"]["accuracy"]["gaussian_noise"]["5"] == max(curve)
    rs = [r.sweep["r"]["gaussian_noise"][s] for s in ("1", "3", "5")]
    assert r.sweep["r"]["clean"]["0"] < rs[0] < rs[1] < rs[2]  # noisier input, larger stem residual
    assert r.baseline["mce"] > 0 and set(r.corruptions["accuracy"]) == {"gaussian_noise", "contrast"}


@pytest.mark.slow
def test_error_grows_with_severity_on_a_fixed_model(cifar_mini_models):
    """The error a corruption causes -- the test images whose prediction it changes -- grows from
    severity 1 to 5 on the trained SDNet. Paired on 600 test images, per corruption: the images
    flipped at s5 but not at s1 against the reverse, one-sided exact sign tests at p < 0.001. No
    corruption may flip significantly *fewer* images at s5, and at least 15 of the 18 (all but
    elastic_transform, whose CIFAR-10-C severity 1 is the largest affine jitter) must flip
    significantly more. (Two 6-epoch models of this recipe: all 18 significant, the weakest saturate
    at p = 2e-4 and JPEG at 1e-5 (38 / 9 images); the 4-epoch fixture: 17 on two threads (JPEG 29 / 12
    misses) and 18 on one, every other p < 1e-5. A strict s5 > s1 in points, as before, hinged on
    JPEG's 2 points.)"""
    from csc_cli.data import load_dataset
    from csc_cli.data.corruptions import ALL, corrupt
    from csc_cli.jobs.classifier.evaluate import predict
    from csc_cli.robust.stats import sign_test
    from tests.conftest import CIFAR_MINI

    model = csc_cli.load(cifar_mini_models["stem"].model_path)
    images = load_dataset("cifar10", "test", CIFAR_MINI).images[:600]
    clean = predict(model, images, torch.device("cpu")).argmax(1)
    rises, falls, counts = [], [], {}
    for name in ALL:
        if name == "elastic_transform":
            continue
        s1, s5 = (predict(model, corrupt(images, name, s), torch.device("cpu")).argmax(1) != clean for s in (1, 5))
        more, fewer = int((s5 & ~s1).sum()), int((s1 & ~s5).sum())
        counts[name] = (more, fewer)
        rises += [name] if sign_test(more, fewer) < 0.001 else []
        falls += [name] if sign_test(fewer, more) < 0.001 else []
    print({n: c for n, c in counts.items()}, "significant rises:", len(rises))
    assert not falls, {n: counts[n] for n in falls}
    assert len(rises) >= 15, {n: counts[n] for n in counts if n not in rises}


def test_calibration_never_rewrites_the_model_it_evaluates(digits_model, tmp_path, cli):
    """`csc eval m --calibrate-lambda` leaves m byte-identical and writes m.calibrated.safetensors;
    only --in-place stores the rule in m itself; --out with --in-place is refused."""
    import shutil

    model = tmp_path / "m.safetensors"
    shutil.copy(digits_model, model)
    before = model.read_bytes()
    args = ["eval", str(model), "--calibrate-lambda", "--calibration-images", "32", "--lambda-sweep", "0.1,0.3",
            "--max-images", "32", "--json"]
    code, out, err = cli(args)
    assert code == 0, err
    written = tmp_path / "m.calibrated.safetensors"
    assert model.read_bytes() == before
    assert json.loads(out)["calibration"]["written_to"] == str(written)
    assert csc_cli.load(written).csc_card.lambda_rule and csc_cli.load(model).csc_card.lambda_rule is None
    code, _, err = cli(args + ["--in-place", "--out", str(tmp_path / "x.safetensors")])
    assert code == 1 and "either --out or --in-place" in err
    code, _, err = cli(args + ["--in-place"])
    assert code == 0, err
    assert model.read_bytes() != before and csc_cli.load(model).csc_card.lambda_rule
