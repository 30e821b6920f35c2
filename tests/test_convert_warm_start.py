"""Function-preserving conversion (csc_cli.convert, units='conv') and the conversion report.

Reference: the original ConvNet itself. With ``steps=1, lam=0, nonneg=False`` a CSC layer in conv
units computes ``||a_m|| / t * t conv(x, W / ||W_m||) = conv(x, W)``, so the converted model must equal
the original, whatever follows each conv (BatchNorm, an activation, nothing).
"""

import copy

import pytest
import timm
import torch
import torch.nn as nn

import csc_cli
from csc_cli import CSCConv2d, CSCConvTranspose2d, convert
from csc_cli.convert import ZERO_ATOM_NORM, code_density, conversion_report, store_step_sizes
from csc_cli.layers import csc_layers

from .test_convert import PANEL

IDENTITY = dict(steps=1, lam=0.0, nonneg=False)
CIFAR = [("resnet20_cifar", {}, 32), ("resnet18_cifar", {}, 16)]


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.slow
@pytest.mark.parametrize("name,kwargs,size", PANEL + CIFAR, ids=[p[0] for p in PANEL + CIFAR])
def test_identity_conversion_equals_the_original_in_float32(name, kwargs, size):
    """float32: within 1e-5 relative of the original, or -- for a model whose own float32 output
    is further than that from its float64 output -- within 3x the original's own float32 error
    (the converted model is one more float32 evaluation of the same function)."""
    torch.manual_seed(0)
    model = csc_cli.create_model(name, num_classes=5, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        reference = model(x)
        exact = copy.deepcopy(model).double()(x.double())
    converted, plan = convert(copy.deepcopy(model), "all", **IDENTITY)
    assert plan.replaced and all(isinstance(m, csc_cli.CSCConvNd) for m in csc_layers(converted).values())
    with torch.no_grad():
        out = converted.eval()(x)
    own = _rel(reference, exact)
    reinitialised = any("re-initialised" in e.reason for e in plan.replaced)
    # a zero-initialised conv gets atoms of norm ZERO_ATOM_NORM: its output is ~1e-8, not 0
    bound = max(1e-5, 3 * own) + (1e3 * ZERO_ATOM_NORM if reinitialised else 0.0)
    assert _rel(out, exact) <= bound, (name, _rel(out, exact), own)


@pytest.mark.parametrize("name,size", [("resnet20_cifar", 32), ("regnetx_002", 32), ("mobilenetv3_small_050", 32),
                                       ("tf_efficientnet_b0", 33), ("resnetv2_50x1_bit", 32), ("ghostnet_050", 32),
                                       ("nf_resnet26", 32)])
def test_identity_conversion_equals_the_original_in_float64(name, size):
    """float64: to 1e-10 relative (Conv2dSame, StdConv2d, ghost modules, depthwise convs, SE);
    nf_resnet26 zero-initialises two convs, whose re-initialised atoms of norm 1e-8 add ~1e-8."""
    torch.manual_seed(0)
    model = csc_cli.create_model(name, num_classes=5).double().eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        reference = model(x)
    converted, plan = convert(copy.deepcopy(model), "all", **IDENTITY)
    with torch.no_grad():
        out = converted.eval()(x)
    reinitialised = [e.name for e in plan.replaced if "re-initialised" in e.reason]
    assert bool(reinitialised) == (name == "nf_resnet26")
    assert _rel(out, reference) <= (1e3 * ZERO_ATOM_NORM if reinitialised else 1e-10)


@pytest.mark.parametrize("follower", ["batchnorm", "relu", "nothing"])
@pytest.mark.parametrize("transposed", [False, True])
def test_conv_followed_by_bn_activation_or_nothing_is_preserved(follower, transposed):
    """In train mode too: the BatchNorm sees the conv's scale, so its batch statistics are the same."""
    torch.manual_seed(1)
    conv = (nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, bias=True) if transposed
            else nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True))
    tail = {"batchnorm": nn.BatchNorm2d(6), "relu": nn.ReLU(), "nothing": nn.Identity()}[follower]
    model = nn.Sequential(conv, tail).double()
    if follower == "batchnorm":
        with torch.no_grad():
            model[1].running_mean.uniform_(-1, 1)
            model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(3, 4, 10, 10, dtype=torch.float64)
    converted, _ = convert(copy.deepcopy(model), "all", **IDENTITY)
    assert isinstance(converted[0], CSCConvTranspose2d if transposed else CSCConv2d)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        getattr(converted, mode)()
        with torch.no_grad():
            assert _rel(converted(x), model(x)) <= 1e-10, mode


def test_sdnet_settings_give_a_thresholded_conv():
    """One non-negative step in conv units is relu(conv(x, W) - lam ||W_m||) (+ bias): the conv's
    own output, thresholded -- as close to the original as a non-negative sparse code can be."""
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        plain = conv(x) - conv.bias.view(-1, 1, 1)
    norms = conv.weight.flatten(1).norm(dim=1).view(-1, 1, 1)
    converted, _ = convert(nn.Sequential(copy.deepcopy(conv)), "all", steps=1, lam=0.1)
    with torch.no_grad():
        out = converted.eval()(x)
    torch.testing.assert_close(out, torch.relu(plain - 0.1 * norms) + conv.bias.view(-1, 1, 1), rtol=1e-12, atol=1e-12)


def test_zero_initialised_conv_keeps_a_zero_output_and_learns():
    """A zero conv's atoms are re-initialised at norm 1e-8: the output stays ~0 (the original's)
    and, the output being homogeneous of degree 1 in the weight, its gradient is of full size."""
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    nn.init.zeros_(conv.weight)
    converted, plan = convert(nn.Sequential(conv), "all", **IDENTITY)
    layer = converted[0]
    assert "re-initialised at norm 1e-08" in plan.entries[0].reason
    assert float(layer.geometry.atom_norms(layer.weight.detach()).max()) == pytest.approx(ZERO_ATOM_NORM)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    out = layer.eval()(x)
    assert float(out.detach().abs().max()) < 1e-6 * float(x.abs().max()) * 27
    (out * torch.randn_like(out)).sum().backward()
    assert float(layer.weight.grad.norm()) > 1e-3


def test_units_code_keeps_the_bare_code_and_build_model_uses_it():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 5, 3).double()
    x = torch.randn(1, 3, 7, 7, dtype=torch.float64)
    code_model, _ = convert(nn.Sequential(copy.deepcopy(conv)), "all", units="code", **IDENTITY)
    conv_model, _ = convert(nn.Sequential(copy.deepcopy(conv)), "all", **IDENTITY)
    code_layer, conv_layer = code_model[0].eval(), conv_model[0].eval()
    assert (code_layer.units, conv_layer.units) == ("code", "conv")
    gain = conv_layer.output_gain((7, 7)).view(-1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(conv_layer(x) - conv.bias.view(-1, 1, 1),
                                   gain * (code_layer(x) - conv.bias.view(-1, 1, 1)))
        # code_from_output undoes bias and gain: what decode() takes
        z, _ = conv_layer.solve(x)
        torch.testing.assert_close(conv_layer.code_from_output(conv_layer(x), (7, 7)), z)
    assert code_layer.output_gain((7, 7)).eq(1).all()
    # SDNets are built in code units (the SDNet layer returns its code)
    for arch in ("resnet20_cifar", "regnetx_002"):
        model = csc_cli.build_model(arch, num_classes=3, csc="stem")
        assert {m.units for m in csc_layers(model).values()} == {"code"}


def test_units_round_trip_through_the_model_file(tmp_path):
    torch.manual_seed(5)
    model = csc_cli.create_model("resnet20_cifar", num_classes=4)
    model, _ = convert(model, "stem", input_size=(3, 16, 16))
    assert model.conv1.units == "conv" and model.csc_card.edits[-1].options["units"] == "conv"
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = model.eval()(x)
    loaded = csc_cli.load(csc_cli.save(model, tmp_path / "m.safetensors"))
    assert loaded.conv1.units == "conv" and loaded.conv1.trained_size == (16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    with pytest.raises(ValueError, match="units must be one of"):
        CSCConv2d(3, 4, 3, units="pixels")


def test_step_sizes_are_stored_at_each_layers_input_size():
    """convert(..., input_size=) estimates every new layer's step size at the size its input has
    in the model (the stem at the image size, later stages smaller) and stores it."""
    torch.manual_seed(6)
    model = csc_cli.create_model("resnet20_cifar", num_classes=4)
    model, _ = convert(model, "all", input_size=(3, 32, 32))
    sizes = {n: m.trained_size for n, m in csc_layers(model).items()}
    assert sizes["conv1"] == (32, 32) and sizes["layer1.0.conv1"] == (32, 32)
    assert sizes["layer2.0.conv1"] == (32, 32) and sizes["layer2.0.conv2"] == (16, 16)
    assert sizes["layer3.2.conv2"] == (8, 8)
    for name, layer in csc_layers(model).items():  # the stored estimate is the converged one
        stored = float(layer.step_size)
        layer._forget_step_size()
        assert float(layer.eval().step_size_for(sizes[name])) == pytest.approx(stored, rel=1e-3), name
    # a transposed layer: stored with the output padding its call resolves
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1,
                                                                                   output_padding=1))
    net, _ = convert(net, "all", input_size=(3, 12, 12))
    assert net[0].trained_size == (12, 12) and net[1].trained_size == (6, 6)
    assert store_step_sizes(net, (3, 12, 12)) == 2


def test_plan_says_why_each_conv_was_replaced_or_skipped():
    model = timm.create_model("resnet18", num_classes=3)
    for layers, why in (("all", "layers='all'"), ("stem", "the stem"), ("layer1.*", "matched by")):
        _, plan = convert(copy.deepcopy(model), layers, dry_run=True)
        assert all(e.reason for e in plan.entries), layers
        assert all(why in e.reason for e in plan.replaced), layers


# ------------------------------------------------------------------ the report
def test_report_source_accuracy_entropy_and_code_density():
    torch.manual_seed(7)
    model = csc_cli.create_model("resnet20_cifar", num_classes=4).eval()
    x = torch.rand(12, 3, 16, 16)
    labels = torch.arange(12) % 4
    converted, _ = convert(copy.deepcopy(model), "all", **IDENTITY)
    report = conversion_report(model, converted, x, labels)
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    assert report["top1_agreement"] == 1.0 and report["images"] == 12
    assert report["source"]["accuracy"] == pytest.approx(float((pred == labels).float().mean()))
    logp = torch.log_softmax(logits, 1)
    assert report["source"]["entropy"] == pytest.approx(float(-(logp.exp() * logp).sum(1).mean()), rel=1e-5)
    assert report["source"]["max_entropy"] == pytest.approx(float(torch.log(torch.tensor(4.0))))
    assert report["source"]["distinct_predictions"] == int(pred.unique().numel())
    # signed codes at lam 0: every entry non-zero; the density is what the hook counted
    assert set(report["layers"]) == set(csc_layers(converted)) and report["dead_layers"] == []
    assert min(report["layers"].values()) > 0.99
    assert report["layers"] == code_density(converted, x)


def test_report_warns_about_dead_layers_and_one_class_predictions():
    """A huge lambda kills every code: each layer is reported dead, with the fix; the converted
    model then predicts one class for every image, which is flagged too."""
    torch.manual_seed(8)
    model = csc_cli.create_model("resnet20_cifar", num_classes=4).eval()
    x = torch.rand(10, 3, 16, 16)
    converted, _ = convert(copy.deepcopy(model), "all", lam=1e6)
    report = conversion_report(model, converted, x)
    assert len(report["dead_layers"]) == 21 and set(report["layers"].values()) == {0.0}
    text = " ".join(report["warnings"])
    assert "21 of 21 CSC layers output no non-zero code" in text and "--calibrate-bn" in text
    assert "the converted model predicts class" in text and "100%" in text


def test_report_flags_near_uniform_predictions(gen):
    """Logits of size 1e-6 are near-uniform whatever the weights; the predicted class must also vary
    between images, or the one-class warning (checked first) would be the one given. Each class
    reads another pixel of the 3x3 neighbourhood (no bias), so the argmax depends on the image.
    (With a randomly initialised conv and bias, one class won >= 90% of the images on some random
    streams: the test depended on what ran before it.)"""
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, bias=False)
            with torch.no_grad():
                self.conv.weight.zero_()
                for k in range(5):
                    self.conv.weight[k, 0, k // 3, k % 3] = 1.0

        def forward(self, x):
            return 1e-6 * self.conv(x)[:, :, 0, 0]

    model = Flat().eval()
    converted, _ = convert(copy.deepcopy(model), "all", **IDENTITY)
    report = conversion_report(model, converted, torch.rand(16, 3, 8, 8, generator=gen))
    assert report["source"]["top_class_share"] < 0.9
    assert any("source model's predictions are near-uniform" in w for w in report["warnings"])


def test_convert_job_says_a_timm_source_has_random_weights():
    from csc_cli.jobs.convert import ConvertConfig, run_convert

    result = run_convert(ConvertConfig(source="timm:resnet18", layers=["stem"], num_classes=3, compare_images=4,
                                       data="fake"))
    assert any("has random weights" in w for w in result.warnings)
    d = result.distance
    assert d["images"] == 4 and set(d["layers"]) == {"conv1"} and 0 < d["layers"]["conv1"] < 1
    assert "accuracy" in d["source"] and "accuracy" in d["converted"]  # fake data has labels


# ------------------------------------------------------------------ the warm-start path, end to end
def test_trained_resnet_converts_without_losing_its_function_and_fine_tunes(cli, cifar_mini_models, tmp_path):
    """A plain ResNet-20 trained on cifar10-mini (conftest) converted with the identity settings
    keeps its predictions on 256 real test images (agreement counted per image, KL ~ float
    rounding); converted with SDNet settings it loses some, and `csc train --init` with the shipped
    warm-start recipe fine-tunes the converted file (units and step sizes travel with it)."""
    from .conftest import CIFAR_MINI

    source = cifar_mini_models["none"].model_path
    common = ["--data", "cifar10", "--data-dir", str(CIFAR_MINI), "--compare-images", "256", "--json"]
    code, out, err = cli(["convert", source, "--layers", "stem", "--steps", "1", "--lambda", "0", "--signed", *common])
    assert code == 0, err
    same = __import__("json").loads(out)["distance"]
    assert same["images"] == 256 and same["kl"] < 1e-6
    assert same["top1_agreement"] >= 1 - 2 / 256  # at most two near-ties flip
    assert abs(same["source"]["accuracy"] - same["converted"]["accuracy"]) <= 2 / 256
    assert same["source"]["accuracy"] > 0.3  # a trained model: the agreement means something

    target = tmp_path / "stem.safetensors"
    code, out, err = cli(["convert", source, "--layers", "stem", *common, "--out", str(target)])
    assert code == 0, err
    sdnet = __import__("json").loads(out)["distance"]
    assert sdnet["top1_agreement"] < 1 and 0 < sdnet["layers"]["conv1"] < 1 and not sdnet["dead_layers"]
    converted = csc_cli.load(target)
    assert converted.conv1.units == "conv" and converted.conv1.trained_size == (32, 32)

    recipe = __import__("pathlib").Path(__file__).resolve().parents[1] / "recipes" / "cifar10_warmstart.toml"
    code, out, err = cli(["train", "fake", "--recipe", str(recipe), "--init", str(target), "--epochs", "1",
                          "--max-batches", "2", "--out", str(tmp_path / "ft"), "--json"])
    assert code == 0, err
    tuned = csc_cli.load(tmp_path / "ft" / "model.safetensors")
    assert tuned.conv1.units == "conv" and tuned.conv1.steps == 2
    assert not torch.equal(tuned.conv1.weight, converted.conv1.weight)  # it was trained
