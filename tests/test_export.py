"""csc export: ONNX graphs of every kind of csc model, compared with csc itself in onnxruntime.

What is compared with what: onnxruntime's outputs against csc's (PyTorch eager, eval mode, csc eval's
own lambda handling: ``lambda_override`` for a fixed lambda, ``LambdaPolicy('auto')`` for the rule).
Differences are measured as the largest absolute difference relative to the largest magnitude of
csc's output, against the issue's fp32 bound 1e-4; fp32 round-off gives about 1e-6 here, so no test
hinges on one machine's floating-point path. The models are tiny, random (BatchNorm statistics from
a few training-mode batches, so that no output is degenerate) and saved and loaded through model
files, as csc export reads them.
"""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import csc_cli
from csc_cli.autoencoders import build_autoencoder
from csc_cli.convert import convert
from csc_cli.export import ExportSpec, GraphPort, compare, csc_outputs, export_onnx, onnx_session, run_onnx
from csc_cli.jobs.export import ExportConfig, check_export
from csc_cli.layers import csc_layers
from csc_cli.models import build_model, create_model
from csc_cli.robust.lam import LambdaPolicy, lambda_override
from csc_cli.robust.rules import (DiscrepancyRule, ResidualRule, SigmaRule, TableRule, layer_input, noise_sigma,
                                  residual_energy)
from csc_cli.surgery import card_of, set_input_normalization

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # the fp32 bound, relative to the largest magnitude of csc's output


# ----------------------------------------------------------------------------- model files
def _ready(model, x):
    """Realistic eval-mode statistics: BatchNorm averages over two training-mode batches (an
    untrained CSC-CTRL's eval outputs are otherwise all zero), and every CSC layer's step stored at
    its size, as training leaves them."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
    with torch.no_grad():
        for _ in range(2):
            model.reconstruct(x) if hasattr(model, "reconstruct") else model(x)
    return model.eval()


def _file(model, path, x, **info):
    torch.manual_seed(0)
    csc_cli.save(_ready(model, x), path, **info)
    return path


def _timm(name, layers, tmp):
    model, _ = convert(create_model(name, num_classes=5), layers, input_size=[3, 32, 32])
    set_input_normalization(model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return _file(model, tmp / f"{name}.safetensors", torch.rand(8, 3, 32, 32), input_size=[3, 32, 32])


def _smooth_images(n, channels, size, seed):
    """Smooth random images in [0, 1] with Gaussian noise of increasing sigma (0 to 0.3): inputs whose
    noise level, and so the rules' lambda, varies from image to image."""
    gen = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, channels, 4, 4, generator=gen), size=(size, size), mode="bilinear",
                         align_corners=False)
    sigma = torch.linspace(0, 0.3, n).view(n, 1, 1, 1)
    return (base + sigma * torch.randn(base.shape, generator=gen)).clamp(0, 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_models")
    torch.manual_seed(0)
    cifar = dict(input_size=[3, 32, 32], normalization={"mean": [0.49, 0.48, 0.45], "std": [0.2, 0.2, 0.2]})
    x32 = torch.rand(8, 3, 32, 32)
    ctrl_x = torch.rand(16, 1, 32, 32)
    transposed, _ = convert(build_autoencoder("ctrl_dcgan32", in_chans=1, feature_dim=8, width=4, csc="none"),
                            "decoder.*", input_size=[1, 32, 32])
    set_input_normalization(transposed, (0.5,), (0.5,))
    csc_ctrl = build_autoencoder("ctrl_dcgan32", in_chans=1, feature_dim=8, width=4)
    set_input_normalization(csc_ctrl, (0.5,), (0.5,))
    return {
        "sdnet_stem": _file(build_model("resnet20_cifar", 10, csc="stem"), tmp / "stem.safetensors", x32, **cifar),
        "sdnet_all": _file(build_model("resnet20_cifar", 10, csc="all"), tmp / "all.safetensors", x32, **cifar),
        # three timm families, a few convs each (the export's cost grows with the CSC layers)
        "timm_resnet10t": _timm("resnet10t", ["conv1.0", "layer1.0.conv1"], tmp),  # ResNet: stem, a block
        "timm_efficientnet": _timm("test_efficientnet", ["conv_stem", "blocks.0.*"], tmp),  # depthwise, SE
        "timm_byobnet": _timm("test_byobnet", ["stem.conv", "stages.0.0.conv1_kxk.conv"], tmp),  # RegNet-like
        "transposed": _file(transposed, tmp / "ctrl_csc_decoder.safetensors", ctrl_x),
        "csc_ctrl": _file(csc_ctrl, tmp / "csc_ctrl.safetensors", ctrl_x),
    }


# ----------------------------------------------------------------------------- the panel
# (id, model file, part, lambda inputs, the graph's input); sdnet_stem: the command's export below
PANEL = [
    ("sdnet_stem", "digits_stem", None, "one", "images"),
    ("sdnet_all_per_layer", "sdnet_all", None, "each", "images"),
    ("timm_resnet10t", "timm_resnet10t", None, "one", "images"),
    ("timm_efficientnet", "timm_efficientnet", None, "one", "images"),
    ("timm_byobnet", "timm_byobnet", None, "one", "images"),
    ("csc_transposed_convs", "transposed", "decoder", "one", "features"),
    ("csc_ctrl_encoder", "csc_ctrl", "encoder", "one", "images"),
    ("csc_ctrl_decoder", "csc_ctrl", "decoder", "one", "features"),
]


def _inputs(model, part, n=6, seed=1):
    gen = torch.Generator().manual_seed(seed)
    if part == "decoder":  # the decoder's input: the model's own features of images
        with torch.no_grad():
            return model.encode(torch.rand(n, model.in_chans, model.image_size, model.image_size, generator=gen))
    c, h, w = card_of(model).data.input_size or model.pretrained_cfg["input_size"]
    return torch.rand(n, c, h, w, generator=gen)


@pytest.fixture(scope="module")
def exported(files, digits_export, tmp_path_factory):
    """``get(key, part, lambda_inputs) -> (loaded model, ExportSpec)``: each graph exported once."""
    tmp = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(key, part=None, lambda_inputs="one"):
        if key == "digits_stem":
            return csc_cli.load(digits_export[0]), digits_export[3]
        if (key, part, lambda_inputs) not in cache:
            model = csc_cli.load(files[key])
            path = tmp / f"{key}-{part}-{lambda_inputs}.onnx"
            cache[key, part, lambda_inputs] = export_onnx(model, path, part=part, lambda_inputs=lambda_inputs)
        return csc_cli.load(files[key]), cache[key, part, lambda_inputs]

    return get


@pytest.mark.parametrize("case", PANEL, ids=[c[0] for c in PANEL])
def test_onnxruntime_matches_csc_at_the_trained_and_two_other_lambdas(exported, case):
    _, key, part, lambda_inputs, input_name = case
    model, spec = exported(key, part, lambda_inputs)
    session = onnx_session(spec.path)
    # the documented interface: a free batch, the lambda inputs optional with their trained values
    first = session.get_inputs()[0]
    assert [i.name for i in session.get_inputs()] == [input_name] and first.shape[0] == "N"
    defaults = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in onnx.load(spec.path).graph.initializer
                if t.name in spec.lambda_layers}
    names = [i.name for i in session.get_overridable_initializers()]
    assert sorted(names) == sorted(spec.lambda_layers) and len(names) == (len(csc_layers(model)) if
                                                                           lambda_inputs == "each" else 1)
    for name, layers in spec.lambda_layers.items():
        assert defaults[name] == pytest.approx([float(model.get_submodule(layers[0]).lam)])
    meta = json.loads({p.key: p.value for p in onnx.load(spec.path).metadata_props}["csc.export"])
    assert [p["name"] for p in meta["inputs"]] == [input_name, *spec.lambda_layers]

    x = _inputs(model, part)
    trained = spec.trained_lambdas[next(iter(spec.lambda_layers.values()))[0]]
    results = {}
    for lam in (None, 0.5 * trained, 2.0 * trained):  # None: the input not fed
        reference = csc_outputs(model, spec, x, lam)
        got = run_onnx(session, x, lam, spec)
        for name, diff in compare(reference, got).items():
            assert diff["max_rel"] <= TOLERANCE, (lam, name, diff)
            assert diff["scale"] > 0, (lam, name)  # a real output, not an all-zero one
        results[lam] = got
    # the lambda input is wired: the two fed lambdas give different outputs
    low, high = results[0.5 * trained], results[2.0 * trained]
    assert max(float((low[n] - high[n]).abs().max() / low[n].abs().max()) for n in low) > 1e-3
    # a batch of one gives the same rows
    one = run_onnx(session, x[:1], None, spec)
    for name, value in one.items():
        assert float((value - results[None][name][:1]).abs().max()) <= TOLERANCE * float(value.abs().max())


def test_per_image_lambdas_and_one_lambda_per_layer(exported):
    """A lambda of shape [N] sets each image's own (csc: each image alone at its lambda); with
    --lambda-inputs each, one layer's input moves that layer only."""
    model, spec = exported("sdnet_all", None, "each")
    session = onnx_session(spec.path)
    x = _inputs(model, None, n=3)
    lams = [0.05, 0.2, 0.6]
    feeds = {"images": x.numpy(), **{n: np.asarray(lams, np.float32) for n in spec.lambda_layers}}
    got = torch.from_numpy(session.run(["logits"], feeds)[0])
    for i, lam in enumerate(lams):
        with torch.no_grad(), lambda_override(model, {n: lam for n in csc_layers(model)}):
            reference = model(x[i : i + 1])
        assert float((got[i : i + 1] - reference).abs().max()) <= TOLERANCE * float(reference.abs().max())
    layer = "layer2.0.conv1"
    with torch.no_grad():
        as_trained = model(x)
        with lambda_override(model, {layer: 0.4}):
            reference = model(x)
    got = torch.from_numpy(session.run(["logits"], {"images": x.numpy(),
                                                    f"lambda.{layer}": np.array([0.4], np.float32)})[0])
    assert float((got - reference).abs().max()) <= TOLERANCE * float(reference.abs().max())
    assert float((got - as_trained).abs().max()) > 1e-3 * float(reference.abs().max())


@pytest.fixture(scope="module")
def stem_at_24_without_equivalents(files, tmp_path_factory):
    """One export serving two tests (each export costs seconds): the 32x32 SDNet stem with a stored
    sigma rule, exported with --lambda auto at 24x24 while the sort-based equivalent of the median is
    withheld -- so ONNX has no operator for the rule's noise estimate."""
    import csc_cli.export as export

    model = csc_cli.load(files["sdnet_stem"])
    card_of(model).lambda_rule = SigmaRule(layer="conv1", reference_lam=0.1, lo=0.1, hi=1.0, a=2.0, b=0.1).to_dict()
    stored = float(model.conv1.step_size)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "_EQUIVALENTS", {})
        spec = export_onnx(model, tmp_path_factory.mktemp("s24") / "s24.onnx", lam="auto", image_size=(24, 24))
    return model, stored, spec


def test_a_rule_onnx_cannot_express_falls_back_to_the_lambda_input(stem_at_24_without_equivalents):
    _, _, spec = stem_at_24_without_equivalents
    assert spec.lambda_mode == "input" and list(spec.lambda_layers) == ["lambda"]
    assert len(spec.notes) == 1 and "\n" not in spec.notes[0]
    assert spec.notes[0].startswith("the sigma rule could not be written in ONNX operators (") and "median" in \
        spec.notes[0] and spec.notes[0].endswith("exported the lambda input instead")
    assert [i.name for i in onnx_session(spec.path).get_overridable_initializers()] == ["lambda"]


def test_another_size_has_the_step_csc_eval_uses_there(stem_at_24_without_equivalents):
    model, stored, spec = stem_at_24_without_equivalents
    assert spec.input_size == [3, 24, 24]
    assert spec.step_sizes["conv1"] == pytest.approx(float(model.conv1.step_size_for((24, 24))), rel=1e-6)
    assert abs(spec.step_sizes["conv1"] / stored - 1) > 1e-4  # L depends on the size
    assert float(model.conv1.step_size) == stored and model.conv1.trained_size == (32, 32)  # a copy was pinned
    session = onnx_session(spec.path)
    assert session.get_inputs()[0].shape == ["N", 3, 24, 24]
    x = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    for lam in (None, 0.3):
        diff = compare(csc_outputs(model, spec, x, lam), run_onnx(session, x, lam, spec))["logits"]
        assert diff["max_rel"] <= TOLERANCE


# ----------------------------------------------------------------------------- the rule in the graph
def _rule_for(kind, model, x):
    """A plausible stored rule of each kind for the stem of ``model``, its coefficients set from the
    statistics of ``x`` so that lambda spreads over [lo, hi] (a few images clamped at the ends)."""
    layer = model.conv1
    u = layer_input(model, layer, x)
    common = dict(layer="conv1", reference_lam=float(layer.lam), lo=0.1, hi=1.0, fitted_on=["gaussian_noise"])
    with torch.no_grad():
        if kind in ("sigma", "sigma_table"):
            s = noise_sigma(u).double()
        elif kind == "residual":
            s = residual_energy(layer, u, float(layer.lam)).double()
        else:  # the discrepancy target halfway between the residuals at lo and at hi, fitted on sigma^2
            s2 = noise_sigma(u).double().square()
            mid = (residual_energy(layer, u, 0.1) + residual_energy(layer, u, 1.0)).double() / 2
            tau, q = torch.linalg.lstsq(torch.stack([s2, torch.ones_like(s2)], 1), mid.unsqueeze(1)).solution.flatten()
            return DiscrepancyRule(**common, q=float(q), tau=float(tau), iterations=5)
    lo_s, hi_s = float(s.quantile(0.1)), float(s.quantile(0.9))
    if kind == "sigma_table":
        return TableRule(**common, knots=[lo_s, (lo_s + hi_s) / 2, hi_s], lams=[0.1, 0.3, 1.0])
    a = 0.9 / (hi_s - lo_s)
    cls = SigmaRule if kind == "sigma" else ResidualRule
    return cls(**common, a=a, b=0.1 - a * lo_s)


def _bisection_margins(rule, model, x):
    """For the discrepancy rule: per image, the smallest |r(x; mid) - target| / target over the
    bisection csc runs -- the room for round-off before a comparison could go the other way."""
    layer = model.conv1
    u = layer_input(model, layer, x)
    with torch.no_grad():
        target = rule.q + rule.tau * noise_sigma(u).square()
        lo, hi = torch.full_like(target, rule.lo), torch.full_like(target, rule.hi)
        margin = torch.full_like(target, float("inf"))
        for _ in range(rule.iterations):
            mid = (lo + hi) / 2
            r = residual_energy(layer, u, mid)
            margin = torch.minimum(margin, (r - target).abs() / target.abs())
            above = r > target
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    return margin


# sigma_table and discrepancy (sigma is an affine map of the same median statistic as sigma_table;
# residual: the autoencoder's test below)
@pytest.mark.parametrize("kind", ["sigma_table", "discrepancy"])
def test_the_rule_in_the_graph_picks_csc_eval_auto_lambda_image_by_image(files, tmp_path, kind):
    model = csc_cli.load(files["sdnet_stem"])
    x = _smooth_images(12, 3, 32, seed=5)
    rule = _rule_for(kind, model, x)
    card_of(model).lambda_rule = rule.to_dict()  # as csc eval --calibrate-lambda stores it
    path = csc_cli.save(model, tmp_path / "calibrated.safetensors")
    model = csc_cli.load(path)
    spec = export_onnx(model, tmp_path / "auto.onnx", lam="auto")
    assert spec.lambda_mode == "auto" and spec.notes == [] and spec.rule["rule"] == kind
    session = onnx_session(spec.path)
    assert [i.name for i in session.get_inputs()] == ["images"] and not session.get_overridable_initializers()
    assert [o.name for o in session.get_outputs()] == ["logits", "lambda"]
    got = run_onnx(session, x)

    # csc eval --lambda auto: the policy it parses, applied to the loaded model file; a hook added
    # after the policy's own sees the lambda it passes to the layer
    chosen = {}
    with torch.no_grad(), LambdaPolicy.parse("auto").applied(model):
        hook = model.conv1.register_forward_pre_hook(lambda m, a, k: chosen.update(lam=k["lam"]), with_kwargs=True)
        logits = model(x)
        hook.remove()
    lam = chosen["lam"]
    inside = ((lam > rule.lo + 1e-6) & (lam < rule.hi - 1e-6)).sum()
    assert int(inside) >= 4, lam  # the test's rule spreads lambda: most images are not clamped

    safe = torch.ones_like(lam, dtype=torch.bool)
    if kind == "discrepancy":
        # a bisection: a comparison within round-off of a tie could go either way, and its last steps
        # come close to the root (relative margins 2e-3 to 7e-3 here, with 5 halvings); fp32
        # residuals of csc and onnxruntime differ by ~1e-7 relative, so 2e-5 leaves room of ~200
        safe = _bisection_margins(rule, model, x) > 2e-5
        assert int(safe.sum()) >= 6, _bisection_margins(rule, model, x)
        assert torch.equal(got["lambda"][safe], lam[safe])
    else:  # a continuous function of the image: equal to round-off
        torch.testing.assert_close(got["lambda"], lam, rtol=1e-5, atol=1e-6)
    scale = float(logits.abs().max())
    assert float((got["logits"][safe] - logits[safe]).abs().max()) <= TOLERANCE * scale
    top2 = logits.topk(2, dim=1).values
    clear = safe & ((top2[:, 0] - top2[:, 1]) > 1e-3 * scale)
    assert int(clear.sum()) >= 6
    assert torch.equal(got["logits"].argmax(1)[clear], logits.argmax(1)[clear])  # the same predictions


def test_an_autoencoders_rule_sets_every_encoder_layer_in_the_graph(files, tmp_path):
    """The residual rule of a CSC-CTRL model, shared by its encoder layers, in the graph of both parts:
    features, reconstruction and lambda as csc computes them (csc eval applies the rule by its hooks)."""
    model = csc_cli.load(files["csc_ctrl"])
    names = [n for n in csc_layers(model) if n.startswith("encoder.")]
    x = _smooth_images(8, 1, 32, seed=7)
    first = model.get_submodule(names[0])
    with torch.no_grad():
        r = residual_energy(first, layer_input(model, first, x), 0.1)
    a = 0.3 / float(r.max() - r.min())
    rule = ResidualRule(layer=names[0], reference_lam=0.1, lo=0.05, hi=0.4, shared_with=names[1:], a=a,
                        b=0.05 - a * float(r.min()))
    card_of(model).lambda_rule = rule.to_dict()
    model = csc_cli.load(csc_cli.save(model, tmp_path / "ctrl_auto.safetensors"))
    spec = export_onnx(model, tmp_path / "ctrl_auto.onnx", lam="auto")  # --part both
    assert spec.part == "both" and spec.lambda_layers == {"rule": names}
    got = run_onnx(onnx_session(spec.path), x)
    reference = csc_outputs(model, spec, x)
    for name, diff in compare(reference, got).items():
        assert diff["max_rel"] <= TOLERANCE and diff["scale"] > 0, (name, diff)
    assert float(reference["lambda"].max() - reference["lambda"].min()) > 0.05


# ----------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    """An SDNet-stem file on the bundled digits (random weights), exported by the command with
    --check on 8 digits test images: the JSON result and the ONNX file."""
    from csc_cli.cli import main

    tmp = tmp_path_factory.mktemp("digits_export")
    torch.manual_seed(0)
    path = _file(build_model("resnet20_cifar", 10, csc="stem", in_chans=1), tmp / "model.safetensors",
                 torch.rand(8, 1, 16, 16), dataset="digits", input_size=[1, 16, 16],
                 normalization={"mean": [0.5], "std": [0.25]})
    out = tmp / "model.onnx"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = main(["export", str(path), "--out", str(out), "--check", "8", "--json"])
    assert code == 0
    result = json.loads(text.getvalue())
    spec = ExportSpec(**{**result["spec"], "inputs": [GraphPort(**p) for p in result["spec"]["inputs"]],
                         "outputs": [GraphPort(**p) for p in result["spec"]["outputs"]]})
    return path, out, result, spec


def test_the_command_checks_the_graph_against_csc(digits_export, capsys):
    from csc_cli.cli import render

    path, out, result, _ = digits_export
    assert result["out"] == str(out) and out.is_file() and result["file_bytes"] == out.stat().st_size
    check = result["check"]
    assert check["passed"] and check["on"] == "digits test (8 images)" and check["images"] == 8
    assert [r["setting"] for r in check["rows"]] == ["as trained (lambda not fed)", "lambda 0.4 fed (4x trained)"]
    assert check["max_rel"] <= TOLERANCE and all(r["top1_agreement"] == 1.0 for r in check["rows"])
    assert [p["name"] for p in result["spec"]["inputs"]] == ["images", "lambda"]
    assert result["spec"]["inputs"][0]["shape"] == ["N", 1, 16, 16]
    render.export(result)
    shown = capsys.readouterr().out
    assert "logits" in shown and "within" in shown and f"wrote {out}" in shown


@pytest.mark.parametrize("args, message", [
    (["--lambda", "auto"], "--lambda auto needs a calibrated model: run `csc eval MODEL --calibrate-lambda`"),
    (["--part", "encoder"], "--part encoder is for autoencoders"),
    (["--out", "model.txt"], "give a file name ending in .onnx"),
    (["--size", "0"], "expected H,W or one number"),
])
def test_the_command_refuses_in_one_line(digits_export, cli, tmp_path, args, message):
    code, out, err = cli(["export", str(digits_export[0]), *args])
    assert code in (1, 2) and message in err
    assert code == 1 or "Usage" in err


def test_a_difference_above_the_tolerance_fails_the_check(digits_export, monkeypatch):
    import csc_cli.jobs.export as job

    path, _, _, spec = digits_export
    real = job.run_onnx

    def off_by_a_little(*args, **kwargs):
        return {n: v + 1e-3 * v.abs().max() for n, v in real(*args, **kwargs).items()}

    monkeypatch.setattr(job, "run_onnx", off_by_a_little)
    with pytest.raises(ValueError) as info:
        check_export(csc_cli.load(path), spec, ExportConfig(model=str(path), check=4))
    text = str(info.value)
    assert "\n" not in text and "above the tolerance 0.0001" in text and "do not deploy it" in text
    assert check_export(csc_cli.load(path), spec, ExportConfig(model=str(path), check=4, tolerance=1e-2))["passed"]


def test_a_nan_difference_fails_the_check(digits_export, monkeypatch):
    """A NaN in onnxruntime's output is the worst difference, not one max() may skip (review)."""
    import csc_cli.jobs.export as job

    path, _, _, spec = digits_export
    real = job.run_onnx
    monkeypatch.setattr(job, "run_onnx", lambda *a, **k: {n: v * float("nan") for n, v in real(*a, **k).items()})
    with pytest.raises(ValueError, match="above the tolerance"):
        check_export(csc_cli.load(path), spec, ExportConfig(model=str(path), check=4))


def test_one_lambda_input_for_layers_trained_at_different_lambdas_is_refused(files, tmp_path):
    """One input's default cannot be two trained values: the encoder's layers at 0.1 and 0.3 need
    --lambda-inputs each (review)."""
    model = csc_cli.load(files["csc_ctrl"])
    encoder = [m for n, m in csc_layers(model).items() if n.startswith("encoder.")]
    encoder[-1].lam = 0.3
    with pytest.raises(ValueError, match="--lambda-inputs each"):
        export_onnx(model, tmp_path / "x.onnx", part="encoder")


# ----------------------------------------------------------------------------- the docs snippet
def test_the_docs_snippet_runs_as_written(digits_export, monkeypatch):
    """The snippet of docs/export.md, exactly as written, on an exported SDNet at two lambdas
    (tests/test_docs.py leaves this page's Python to this test: it needs a model.onnx)."""
    from tests.test_docs import blocks

    (snippet,) = [text for lang, text, _ in blocks(ROOT / "docs" / "export.md") if lang == "python"]
    monkeypatch.chdir(digits_export[1].parent)
    scope = {}
    exec(compile(snippet, "docs/export.md snippet", "exec"), scope)
    assert scope["as_trained"].shape == scope["raised"].shape == (4, 10)
    assert np.abs(scope["as_trained"] - scope["raised"]).max() > 1e-4  # lambda 0.5 is not the trained 0.1
