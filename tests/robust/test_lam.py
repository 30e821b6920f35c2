"""The one test-time lambda policy (csc_cli/robust/lam.py) that eval and attack both apply."""

import pytest
import torch

from csc_cli.models import build_model
from csc_cli.robust.lam import LambdaPolicy, layer_lambdas
from csc_cli.robust.rules import ResidualRule


@pytest.fixture(scope="module")
def all_csc():
    return build_model("resnet20_cifar", 10, csc="all").eval()  # every layer at the trained lam = 0.1


def test_parse_every_form():
    assert LambdaPolicy.parse(None).as_trained and LambdaPolicy.parse("").as_trained
    assert LambdaPolicy.parse("0.5").values == (("", 0.5),)
    assert LambdaPolicy.parse(" conv1=0.5, layer1.0.conv1=0.2").values == (("conv1", 0.5), ("layer1.0.conv1", 0.2))
    assert LambdaPolicy.parse("auto").auto and not LambdaPolicy.parse("auto").as_trained
    assert LambdaPolicy.parse(None, scale=3.0, layers="all") == LambdaPolicy(scale=3.0, layers="all")


@pytest.mark.parametrize("lam, scale, layers, message", [
    ("lots", None, "first", "'auto', a number, or layer=value pairs"),
    ("conv1=x", None, "first", "'auto', a number, or layer=value pairs"),
    ("-0.1", None, "first", "--lambda must be >= 0"),
    ("nan", None, "first", "--lambda must be >= 0"),
    ("auto", 2.0, "first", "does not combine with --lambda-scale"),
    (None, -1.0, "first", "--lambda-scale must be >= 0"),
    (None, float("inf"), "first", "--lambda-scale must be >= 0"),
    (None, 2.0, "some", "--lambda-layers must be first or all"),
])
def test_parse_refuses_with_one_line(lam, scale, layers, message):
    with pytest.raises(ValueError, match=message):
        LambdaPolicy.parse(lam, scale, layers)


def test_resolve_against_the_layers_trained_lambdas(all_csc):
    names = list(layer_lambdas(all_csc))
    first = names[0]
    assert first == "conv1" and len(names) == 19  # stem + 2 per block x 9 blocks
    assert LambdaPolicy.parse(None).resolve(all_csc) == ({}, None)
    assert LambdaPolicy.parse("0.5").resolve(all_csc) == ({"conv1": 0.5}, None)
    values, _ = LambdaPolicy.parse(None, scale=3.0).resolve(all_csc)
    assert values == {"conv1": pytest.approx(0.3)}
    values, _ = LambdaPolicy.parse("layer1.0.conv1=0.7", scale=2.0, layers="all").resolve(all_csc)
    assert set(values) == set(names) and values["layer1.0.conv1"] == 0.7  # named explicitly: not scaled
    assert values["layer3.2.conv2"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="'fc' is not a CSC layer"):
        LambdaPolicy.parse("fc=0.3").resolve(all_csc)


def test_applied_sets_and_restores(all_csc):
    before = layer_lambdas(all_csc)
    with LambdaPolicy.parse("0.5,layer1.0.conv2=0.2").applied(all_csc) as info:
        assert info["mode"] == "fixed" and info["trained"] == before
        assert float(all_csc.conv1.lam) == 0.5 and float(all_csc.layer1[0].conv2.lam) == pytest.approx(0.2)
    assert layer_lambdas(all_csc) == before
    with LambdaPolicy.parse(None).applied(all_csc) as info:
        assert info["mode"] == "as trained" and info["values"] == {}


def test_auto_reads_the_stored_rule_and_refuses_without_one(all_csc):
    plain = build_model("resnet20_cifar", 10, csc="none")
    with pytest.raises(ValueError, match="no CSC layer"):
        LambdaPolicy.parse("0.3").resolve(plain)
    assert LambdaPolicy.parse(None).resolve(plain) == ({}, None)  # as trained applies to any model
    with pytest.raises(ValueError, match="--calibrate-lambda"):
        LambdaPolicy.parse("auto").resolve(all_csc)
    rule = ResidualRule("conv1", a=2.0, b=0.1, reference_lam=0.1)
    all_csc.csc_card.lambda_rule = rule.to_dict()
    try:
        values, got = LambdaPolicy.parse("auto").resolve(all_csc)
        assert values == {} and got == rule
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad(), LambdaPolicy.parse("auto").applied(all_csc) as info:
            assert info["mode"] == "auto" and info["rule"]["a"] == 2.0
            auto = all_csc(x)
        lam = rule.lam_for(all_csc.conv1, x)  # per input, as the rule prescribes
        with torch.no_grad():
            manual = torch.cat([_with_lam(all_csc, float(v), x[i : i + 1]) for i, v in enumerate(lam)])
        torch.testing.assert_close(auto, manual, rtol=1e-4, atol=1e-5)
    finally:
        all_csc.csc_card.lambda_rule = None


def _with_lam(model, lam, x):
    with LambdaPolicy.parse(str(lam)).applied(model):
        return model(x)
