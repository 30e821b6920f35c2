"""convert(): any timm ConvNet becomes a CSC network; plan, API, warm start, files, CLI, bad input."""

import json
import time
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import csc_cli
from csc_cli import CSCConv2d, convert
from csc_cli.convert import calibrate_batchnorm, find_convs, output_distance
from csc_cli.models import build_model
from csc_cli.layers import CSCConvNd

# (timm name, extra create_model kwargs, input size): one per family, small variants, no weights
PANEL = [
    ("resnet18", {}, 32),
    ("resnet18d", {}, 32),  # ResNet-D: deep stem, avg-pool shortcut
    ("resnext26ts", {}, 32),  # ResNeXt: grouped convs
    ("regnetx_002", {}, 32),
    ("efficientnet_b0", {}, 32),
    ("tf_efficientnet_b0", {}, 33),  # Conv2dSame: TF 'SAME' padding, odd input
    ("mixnet_s", {}, 32),  # MixedConv2d
    ("mobilenetv3_small_050", {}, 32),
    ("convnext_atto", {}, 32),
    ("densenet121", {}, 32),
    ("vgg11", {"mlp_ratio": 0.125}, 32),  # pre-logits ConvMlp is a 7x7 conv; smaller to keep the suite fast
    ("resnetv2_50x1_bit", {}, 32),  # StdConv2d
    ("nf_resnet26", {}, 32),  # ScaledStdConv2d
    ("dla34", {}, 32),
    ("ghostnet_050", {}, 32),
    ("cspresnet50", {}, 32),
    ("repvgg_a0", {}, 32),  # re-parameterised first
    ("efficientnet_cc_b0_4e", {}, 32),  # CondConv2d: skipped with a reason
]


def _module_types(model):
    return [(n, type(m).__name__) for n, m in model.named_modules() if n != "csc_input"]


def _replayed_edits(monkeypatch):
    """Spy on the one surgery function, wherever it is called from (build, convert, load)."""
    import csc_cli.models
    import csc_cli.surgery

    seen = []
    real = csc_cli.surgery.apply_edit

    def spy(model, edit):
        seen.append(edit.to_dict())
        return real(model, edit)

    monkeypatch.setattr(csc_cli.surgery, "apply_edit", spy)
    monkeypatch.setattr(csc_cli.models, "apply_edit", spy)
    return seen


SDNETS = [("sdnet18", dict(arch="resnet18_cifar", csc="stem")), ("sdnet18_all", dict(arch="resnet18_cifar", csc="all")),
          ("sdnet18_all_no_shortcut", dict(arch="resnet18_cifar", csc="all", shortcut=False)),
          ("resnet18_imagenet_all", dict(arch="resnet18", csc="all"))]


def _all_bn_weights_to_one(model):
    # timm zero-initialises the last BN of residual branches, which makes the branch convs'
    # gradients exactly zero at init; give every BN a unit scale so "reaches" means non-zero
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            nn.init.ones_(m.weight)


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, size", PANEL, ids=[p[0] for p in PANEL])
def test_timm_panel_converts_all_layers(name, kwargs, size, tmp_path, monkeypatch):
    """Every conv of each panel model is planned, replaced or skipped with a reason, reached by the
    backward pass; and load(save(m)) replays the very edits convert applied (through the one
    surgery function), rebuilding the same modules with identical outputs."""
    seen = _replayed_edits(monkeypatch)
    torch.manual_seed(0)
    model = csc_cli.create_model(name, num_classes=7, **kwargs)
    _all_bn_weights_to_one(model)
    x = torch.randn(2, 3, size, size)
    model.eval()
    with torch.no_grad():
        expected_shape = model(x).shape
    convs_before = {n for n, _, _, _ in find_convs(model)}
    # lam = 0: with lam > 0 a layer whose inputs are all below the threshold at init (e.g. the
    # 1x1 squeeze-excite convs on pooled features) has all-zero codes and exactly zero gradient,
    # which would hide a layer the backward pass does not reach
    model, plan = convert(model, "all", lam=0.0)
    # the plan accounts for every conv (re-parameterisation may fuse branches first)
    if not plan.reparameterized:
        assert {e.name for e in plan.entries} == convs_before
    assert {e.name for e in plan.entries} == {n for n, _, _, _ in find_convs(model)}
    assert all(e.reason for e in plan.skipped)
    assert plan.replaced
    model.train()
    out = model(x)
    assert out.shape == expected_shape
    (out * torch.randn_like(out)).sum().backward()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, CSCConvNd)}
    assert len(layers) == len(plan.replaced)
    unreached = [n for n, m in layers.items() if m.weight.grad is None or not torch.isfinite(m.weight.grad).all()
                 or m.weight.grad.abs().sum() == 0]
    assert not unreached, unreached
    if name == "efficientnet_cc_b0_4e":
        assert any("per-sample" in e.reason for e in plan.skipped)
    if name == "tf_efficientnet_b0":
        assert any(e.padding == "tf_same" for e in plan.replaced)
    if name in ("resnetv2_50x1_bit", "nf_resnet26"):
        assert any("standardised" in e.reason for e in plan.replaced)
    if name == "nf_resnet26":  # timm zero-initialises each block's last conv
        assert any("re-initialised" in e.reason for e in plan.replaced)
    _assert_round_trip(model, seen, x, tmp_path)


def test_stem_and_globs_and_filters():
    model = timm.create_model("resnet18", num_classes=4)
    _, plan = convert(model, "stem", dry_run=True)
    assert [e.name for e in plan.replaced] == ["conv1"]
    _, plan = convert(model, "layer1.*", dry_run=True)
    assert {e.name for e in plan.replaced} == {"layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"}
    _, plan = convert(model, "all", kernel_sizes=[1], dry_run=True)
    assert {e.name for e in plan.replaced} == {f"layer{i}.0.downsample.0" for i in (2, 3, 4)}
    _, plan = convert(model, "all", exclude=["*downsample*", "conv1"], include=["layer4.*"], dry_run=True)
    assert {e.name for e in plan.replaced} == {"layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"}
    assert all(isinstance(m, nn.Conv2d) for m in model.modules() if hasattr(m, "weight") and m.weight.dim() == 4)
    mobile = timm.create_model("mobilenetv3_small_050", num_classes=4)
    _, plan = convert(mobile, "all", depthwise=True, dry_run=True)
    assert plan.replaced and all(e.depthwise for e in plan.replaced)
    assert all(not e.depthwise for e in plan.skipped if e.reason == "not depthwise") and plan.skipped


def test_keeps_the_timm_api_dtype_format_and_frozen_layers():
    model = timm.create_model("resnet18", num_classes=5).double().to(memory_format=torch.channels_last)
    model.conv1.weight.requires_grad_(False)
    model, plan = convert(model, "all")
    assert model.conv1.weight.dtype == torch.float64 and not model.conv1.weight.requires_grad
    assert model.layer1[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    feats = model.forward_features(x)
    assert model.forward_head(feats).shape == (2, 5)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    assert model.pretrained_cfg["architecture"] == "resnet18"


def test_converting_twice_changes_nothing():
    model, _ = convert(timm.create_model("resnet18", num_classes=3), "all")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    model2, plan = convert(model, "all")
    assert model2 is model and all(e.action == "keep" for e in plan.entries)
    assert dict(model.named_modules()).keys() == modules.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_one_step_no_lambda_is_relu_of_scaled_conv():
    """steps=1, lam=0, code units: the converted conv computes relu(t * conv(x)) with the conv's
    atoms at unit norm (the dictionary is weight / ||weight||), plus the conv's bias. (In conv units,
    convert's default, the same code times ||W_m|| / t: tests/test_convert_warm_start.py.)"""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True).double()
    model = nn.Sequential(conv)
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    with torch.no_grad():
        plain = conv(x) - conv.bias.view(-1, 1, 1)
    norms = conv.weight.flatten(1).norm(dim=1).view(-1, 1, 1)
    bias = conv.bias.detach().clone().view(-1, 1, 1)
    model, _ = convert(model, "all", steps=1, lam=0.0, units="code")
    layer = model[0].eval()
    t = layer.step_size_for((11, 11))
    torch.testing.assert_close(layer(x), torch.relu(t * plain / norms) + bias)


def test_weight_standardised_conv_uses_the_standardised_weight():
    from timm.layers import StdConv2d

    torch.manual_seed(0)
    std = StdConv2d(3, 6, 3, padding=1, bias=False).double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        reference = std(x)
    model, plan = convert(nn.Sequential(std), "all", steps=1, lam=0.0, units="code")
    layer = model[0].eval()
    t = layer.step_size_for((9, 9))
    w_std = F.batch_norm(std.weight.reshape(1, 6, -1), None, None, training=True, momentum=0.0, eps=std.eps)
    norms = w_std.reshape(6, -1).norm(dim=1).view(-1, 1, 1)
    torch.testing.assert_close(layer(x), torch.relu(t * reference / norms))


def test_tf_same_conv_matches_conv2d_same():
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    conv = Conv2dSame(3, 4, 3, stride=2, bias=False).double()
    x = torch.randn(1, 3, 12, 13, dtype=torch.float64)
    with torch.no_grad():
        reference = conv(x)
    model, _ = convert(nn.Sequential(conv), "all", steps=1, lam=0.0, units="code")
    layer = model[0].eval()
    out = layer(x)
    norms = conv.weight.flatten(1).norm(dim=1).view(-1, 1, 1)
    torch.testing.assert_close(out, torch.relu(layer.step_size_for((12, 13)) * reference / norms))
    assert layer.decode(out, (12, 13)).shape == x.shape


def test_custom_conv_subclass_is_skipped_with_a_reason():
    class Weird(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Weird(4, 4, 3), nn.ConvTranspose2d(4, 3, 3))
    model, plan = convert(model, "all")
    actions = {e.name: (e.action, e.reason) for e in plan.entries}
    assert actions["0"][0] == "replace"
    assert actions["1"][0] == "skip" and "own forward" in actions["1"][1]
    assert actions["2"][0] == "replace"  # transposed convs are converted (sparse deconvolution)


def test_shared_conv_is_replaced_everywhere_by_one_layer():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    model, plan = convert(model, "all")
    assert model[0] is model[2] and isinstance(model[0], CSCConv2d)
    assert plan.entries[0].aliases == ["2"]


@pytest.mark.parametrize("name", ["tf_efficientnet_b0", "resnetv2_50x1_bit", "repvgg_a0", "resnet18"])
def test_save_load_round_trip_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = csc_cli.create_model(name, num_classes=6)
    model, _ = convert(model, "all" if name != "resnet18" else "stem", lam=0.2)
    model.train()
    x = torch.randn(2, 3, 35, 35)
    model(x)  # one training forward: step sizes estimated and stored
    model.eval()
    with torch.no_grad():
        expected = model(x)
    path = csc_cli.save(model, tmp_path / "m.safetensors", class_names=list("abcdef"))
    loaded = csc_cli.load(path)
    assert not loaded.training and loaded.csc_card.data.class_names == list("abcdef")
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_calibrate_batchnorm_averages_the_batch_statistics():
    """Running stats become the plain average of the per-batch statistics (momentum None), not
    an exponential average dominated by the last batches: with equal batches, the exact mean."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    images = torch.randn(48, 3, 8, 8)
    assert calibrate_batchnorm(model.eval(), images, batch_size=16) == 1
    with torch.no_grad():
        feats = model[0](images)
    torch.testing.assert_close(model[1].running_mean, feats.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    per_batch_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats.split(16)]).mean(0)
    torch.testing.assert_close(model[1].running_var, per_batch_var, rtol=1e-5, atol=1e-6)
    assert not model.training


def test_output_distance_is_zero_for_a_copy_and_positive_after_conversion():
    import copy

    torch.manual_seed(0)  # the KL margin depends on the draw: not on which tests ran before
    model = timm.create_model("resnet18", num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    same = output_distance(model, copy.deepcopy(model), x)
    assert same["top1_agreement"] == 1.0 and abs(same["kl"]) < 1e-6
    converted, _ = convert(copy.deepcopy(model), "all")
    assert output_distance(model, converted, x)["kl"] > 1e-4


# ------------------------------------------------------------------ CLI
def test_cli_dry_run_prints_the_plan_and_writes_nothing(cli, tmp_path):
    target = tmp_path / "never.safetensors"
    code, out, _ = cli(["convert", "timm:resnet18", "--dry-run", "--out", str(target)])
    assert code == 0 and "layer4.1.conv2" in out and "20 replaced" in out and "dry run" in out
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_cli_convert_writes_a_model_file_that_loads(cli, tmp_path):
    target = tmp_path / "m.safetensors"
    code, out, _ = cli(["convert", "timm:resnet18", "--layers", "stem", "--num-classes", "10", "--lambda", "0.3",
                        "--data", "fake", "--calibrate-bn", "32", "--json", "--out", str(target)])
    assert code == 0
    result = json.loads(out)
    assert result["plan"]["counts"] == {"replace": 1, "skip": 19, "keep": 0}
    assert result["calibrated_batchnorms"] == 20 and 0 <= result["distance"]["top1_agreement"] <= 1
    model = csc_cli.load(target)
    assert float(model.conv1.lam) == pytest.approx(0.3) and model.conv1.steps == 2
    # a model file is a valid SOURCE too: convert the rest
    code, out, _ = cli(["convert", str(target), "--json", "--data", "fake", "--compare-images", "4",
                        "--out", str(tmp_path / "all.safetensors")])
    counts = json.loads(out)["plan"]["counts"]
    assert code == 0 and counts == {"replace": 19, "skip": 0, "keep": 1}


def test_cli_weights_from_a_torch_checkpoint(cli, tmp_path):
    model = timm.create_model("resnet18", num_classes=10)
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "w.pth")
    target = tmp_path / "m.safetensors"
    code, _, err = cli(["convert", "timm:resnet18", "--num-classes", "10", "--weights", str(tmp_path / "w.pth"),
                        "--layers", "stem", "--compare-images", "2", "--out", str(target)])
    assert code == 0, err
    loaded = csc_cli.load(target)
    torch.testing.assert_close(loaded.fc.weight, model.fc.weight)
    code, _, err = cli(["convert", "timm:resnet18", "--num-classes", "5", "--weights", str(tmp_path / "w.pth")])
    assert code == 1 and "num-classes" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["convert", "timm:resnet181"], "did you mean resnet18"),
        (["convert", "no/such/file.safetensors"], "timm:NAME or an existing model file"),
        (["convert", "timm:resnet18", "--layers", "nothing.*"], "match no convolution"),
        (["convert", "timm:resnet18", "--calibrate-bn", "8"], "needs a dataset"),
        (["convert", "timm:resnet18", "--lambda", "-1"], "lam must be"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, cli):
    code, _, err = cli(args)
    assert code == 1 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 or err.count("error:") == 1


def test_cli_source_file_that_is_not_a_model(cli, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model at all")
    code, _, err = cli(["convert", str(junk)])
    assert code == 1 and "not a safetensors model file" in err


def test_cli_pretrained_offline_says_what_to_do(cli, monkeypatch):
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise ConnectionError("no network")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    code, _, err = cli(["convert", "timm:resnet18", "--pretrained", "--dry-run"])
    assert code == 1 and "--weights FILE" in err


def _assert_round_trip(model, seen, x, tmp_path):
    built = list(seen)
    assert built == [e.to_dict() for e in model.csc_card.edits] and any(e["op"] != "identity" for e in built)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    path = csc_cli.save(model, tmp_path / "m.safetensors")
    seen.clear()
    loaded = csc_cli.load(path)
    # the same edits in the same order (options as the layers hold them at save time)
    assert [{k: v for k, v in e.items() if k != "options"} for e in seen] == \
        [{k: v for k, v in e.items() if k != "options"} for e in built]
    assert _module_types(loaded) == _module_types(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs", SDNETS, ids=[n for n, _ in SDNETS])
def test_sdnets_load_replays_the_edits_that_built_them(name, kwargs, tmp_path, monkeypatch):
    """SDNet-18, -All, -All without shortcuts and the ImageNet-layout -All (max-pool -> a new CSC
    layer): load replays build_model's edits and gives identical outputs."""
    seen = _replayed_edits(monkeypatch)
    torch.manual_seed(0)
    model = build_model(num_classes=6, lam=0.2, **kwargs)
    x = torch.rand(2, 3, 32, 32)
    model.train()
    model(x)  # a training forward: step sizes estimated and stored
    _assert_round_trip(model, seen, x, tmp_path)


def test_checkpoint_has_no_surgery_of_its_own():
    """Model files are rebuilt by models.rebuild -> surgery.apply_edit, nothing else: the loader
    names none of the surgery tools, and there is one conv -> CSC constructor."""
    import inspect

    import csc_cli.checkpoint
    import csc_cli.models

    source = inspect.getsource(csc_cli.checkpoint)
    for tool in ("replace_module", "csc_layer_for", "from_record", "CSCConv1d", "CSCConv2d", "reparameterize_model",
                 "Identity(", "setattr("):
        assert tool not in source, tool
    assert "rebuild(card)" in source and "apply_edit(model, edit)" in inspect.getsource(csc_cli.models.rebuild)
    for module in ("convert", "models", "layers", "jobs/convert", "jobs/train"):
        text = (Path(csc_cli.__file__).parent / f"{module}.py").read_text()
        assert "from_record(" not in text or module == "layers", module


# ----------------------------------------------------------------------------- transposed convolutions
class _ToyUNet(nn.Module):
    """Conv down, ConvTranspose2d up (with output_size, as U-Nets do for odd sizes), skip concat."""

    def __init__(self):
        super().__init__()
        self.down1 = nn.Conv2d(3, 8, 3, padding=1)
        self.down2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.down3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)
        self.up1 = nn.ConvTranspose2d(32, 8, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        d1 = F.relu(self.down1(x))
        d2 = F.relu(self.down2(d1))
        d3 = F.relu(self.down3(d2))
        u2 = self.up2(d3, output_size=d2.shape)
        u1 = self.up1(torch.cat([u2, d2], 1), output_size=d1.shape)
        return self.head(torch.cat([u1, d1], 1))


def test_unet_like_toy_converts_every_transposed_conv():
    from csc_cli import CSCConvTranspose2d

    torch.manual_seed(0)
    model = _ToyUNet()
    inputs = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 11, 12)]  # even, and odd (output_size matters)
    with torch.no_grad():
        shapes = [model(x).shape for x in inputs]
    _, plan = convert(model, "up*", dry_run=True)  # globs select transposed convs like any other
    assert {e.name for e in plan.replaced} == {"up1", "up2"}
    _, plan = convert(model, "all", kernel_sizes=[4], dry_run=True)
    assert {e.name for e in plan.replaced} == {"up2"}
    model, plan = convert(model, "all", lam=0.0)  # lam = 0: no code is zero by the threshold alone
    assert {e.name: (e.action, e.kind) for e in plan.entries if e.name.startswith("up")} == \
        {"up1": ("replace", "ConvTranspose2d"), "up2": ("replace", "ConvTranspose2d")}
    assert isinstance(model.up1, CSCConvTranspose2d) and isinstance(model.up2, CSCConvTranspose2d)
    assert model.up1.output_padding == (1, 1) and model.up2.bias is not None and model.up1.bias is None
    model.train()
    for x, shape in zip(inputs, shapes):
        out = model(x)
        assert out.shape == shape
        model.zero_grad()
        (out * torch.randn_like(out)).sum().backward()
        layers = {n: m for n, m in model.named_modules() if isinstance(m, CSCConvNd)}
        assert len(layers) == 6
        unreached = [n for n, m in layers.items() if m.weight.grad is None
                     or not torch.isfinite(m.weight.grad).all() or m.weight.grad.abs().sum() == 0]
        assert not unreached, unreached
    # a depthwise transposed conv is depthwise to the filters too
    _, plan = convert(nn.Sequential(nn.ConvTranspose2d(4, 4, 3, groups=4), nn.ConvTranspose2d(4, 2, 3)), "all",
                      depthwise=True, dry_run=True)
    assert [e.name for e in plan.replaced] == ["0"] and plan.replaced[0].depthwise


def test_timm_model_with_transposed_convs_converts_and_round_trips(tmp_path):
    """timm's LowFormer up-samples its strided attention with ConvTranspose2d: every one is
    converted, the output keeps its shape, gradients reach each dictionary, and load(save(m))
    gives identical outputs."""
    from csc_cli import CSCConvTranspose2d

    torch.manual_seed(0)
    model = csc_cli.create_model("lowformer_b0", num_classes=4)
    transposed = [n for n, m in model.named_modules() if isinstance(m, nn.ConvTranspose2d)]
    assert transposed
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        shape = model(x).shape
    model, plan = convert(model, "*upsampling", lam=0.2)
    assert sorted(e.name for e in plan.replaced) == sorted(transposed)
    assert all(isinstance(model.get_submodule(n), CSCConvTranspose2d) for n in transposed)
    model.train()
    out = model(x)  # a training forward: step sizes estimated and stored
    assert out.shape == shape
    out.sum().backward()
    assert all(model.get_submodule(n).weight.grad is not None for n in transposed)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    loaded = csc_cli.load(csc_cli.save(model, tmp_path / "m.safetensors"))
    assert [type(loaded.get_submodule(n)).__name__ for n in transposed] == ["CSCConvTranspose2d"] * len(transposed)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
