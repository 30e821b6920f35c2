"""The continuation path from a conv to a CSC layer (csc_cli.continuation, the solver's Relaxation),
signed codes before residual sums (convert's nonneg='auto') and distillation (jobs.training).

Compared against: the source ConvNet (the path's start, float64), a plain CSC layer at the target
settings (its end), the plain solver with signed codes / one step (the relaxation's corners), the
model before a save/load or a kill/resume (mid-path), and a KL computed by hand with ``math``."""

import copy
import json
import math

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import csc_cli
from csc_cli.card import CardError, ModelCard
from csc_cli.continuation import ContinuationPath, attach, current, finish
from csc_cli.convert import convert, residual_signs
from csc_cli.core import Relaxation, solve_lasso
from csc_cli.core.operators import ConvGeometry
from csc_cli.jobs.events import BatchEnd
from csc_cli.jobs.train import TrainConfig, run_train
from csc_cli.jobs.training import distillation_loss
from csc_cli.layers import CSCConv2d, csc_layers
from csc_cli.models import build_model


def _source(in_chans=3, seed=0):
    torch.manual_seed(seed)
    model = build_model("resnet20_cifar", 10, csc="none", in_chans=None if in_chans == 3 else in_chans)
    # BatchNorm statistics that are not the identity, so the comparison sees them
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.double().eval()


def _convert(model, layers="all", **options):
    settings = dict(steps=2, lam=0.1, nonneg=True)
    settings.update(options)
    return convert(copy.deepcopy(model), layers, input_size=(3, 32, 32), **settings)[0]


# ------------------------------------------------------------------ the solver's relaxation
def _problem(gen):
    geometry = ConvGeometry.create(2, 3, 6, 3, 1, 1, 1, 1, "zeros")
    weight = torch.randn(6, 3, 3, 3, generator=gen, dtype=torch.float64)
    weight = weight / weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    return x, weight, geometry


def test_the_plain_relaxation_is_the_plain_solver_bit_for_bit(gen):
    x, w, g = _problem(gen)
    plain, _ = solve_lasso(x, w, g, 0.1, 0.05, 3)
    relaxed, _ = solve_lasso(x, w, g, 0.1, 0.05, 3, relaxation=Relaxation())
    assert torch.equal(plain, relaxed)


def test_the_relaxation_corners_are_the_signed_code_and_one_step(gen):
    x, w, g = _problem(gen)
    signed, _ = solve_lasso(x, w, g, 0.1, 0.05, 3, nonneg=False)
    leak1, _ = solve_lasso(x, w, g, 0.1, 0.05, 3, nonneg=True, relaxation=Relaxation(leak=1.0))
    torch.testing.assert_close(leak1, signed, rtol=0, atol=1e-14)
    one, _ = solve_lasso(x, w, g, 0.1, 0.05, 1)
    tail0, _ = solve_lasso(x, w, g, 0.1, 0.05, 3, relaxation=Relaxation(tail=0.0))
    assert torch.equal(one, tail0)
    # lam_scale multiplies lam
    half, _ = solve_lasso(x, w, g, 0.05, 0.05, 2)
    scaled, _ = solve_lasso(x, w, g, 0.1, 0.05, 2, relaxation=Relaxation(lam_scale=0.5))
    torch.testing.assert_close(scaled, half, rtol=0, atol=1e-14)


def test_the_tail_blends_the_first_and_the_last_step(gen):
    x, w, g = _problem(gen)
    z1, _ = solve_lasso(x, w, g, 0.1, 0.05, 1)
    zk, _ = solve_lasso(x, w, g, 0.1, 0.05, 3)
    mid, _ = solve_lasso(x, w, g, 0.1, 0.05, 3, relaxation=Relaxation(tail=0.3))
    torch.testing.assert_close(mid, z1 + 0.3 * (zk - z1), rtol=0, atol=1e-14)


def test_a_leaky_code_keeps_that_share_of_its_negative_part(gen):
    x, w, g = _problem(gen)
    signed, _ = solve_lasso(x, w, g, 0.1, 0.05, 1, nonneg=False)
    leaky, _ = solve_lasso(x, w, g, 0.1, 0.05, 1, relaxation=Relaxation(leak=0.25))
    expected = torch.where(signed > 0, signed, 0.25 * signed)
    assert (signed < 0).any() and (signed > 0).any()
    torch.testing.assert_close(leaky, expected, rtol=0, atol=1e-14)


def test_relaxations_are_checked_and_the_implicit_backward_refuses_them(gen):
    for bad in (dict(leak=1.5), dict(tail=-0.1), dict(lam_scale=True)):
        with pytest.raises(ValueError, match="relaxation"):
            Relaxation(**bad)
    x, w, g = _problem(gen)
    x.requires_grad_(True)
    with pytest.raises(ValueError, match="implicit"):
        solve_lasso(x, w, g, 0.1, 0.05, 2, backward="implicit", relaxation=Relaxation(leak=0.5))


# ------------------------------------------------------------------ the path on a converted ResNet-20
@pytest.mark.parametrize("layers", ["stem", "all"])
def test_the_path_starts_at_the_source_and_ends_at_plain_csc_layers(layers, gen):
    source = _source()
    x = torch.rand(4, 3, 32, 32, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        reference = source(x)
    model = _convert(source, layers)
    target = _convert(source, layers)
    path = ContinuationPath(steps=8)
    attach(model, path, 0)
    with torch.no_grad():
        start = model(x)
        plain = target(x)
    # float64: the conv's own result up to rounding (x t / t)
    torch.testing.assert_close(start, reference, rtol=0, atol=1e-12)
    assert (plain - reference).abs().max() > 1e-3  # the target is a different function
    attach(model, path, 4)
    with torch.no_grad():
        middle = model(x)
    assert (middle - reference).abs().max() > 1e-6 and (middle - plain).abs().max() > 1e-6
    attach(model, path, 8)  # the end: nothing of the path left
    assert current(model) is None
    assert all(layer.relaxation is None for layer in csc_layers(model).values())
    with torch.no_grad():
        end = model(x)
    assert torch.equal(end, plain)


def test_each_factor_ramps_over_its_window():
    path = ContinuationPath(steps=10, lam=(0.0, 0.5), nonneg=(0.5, 1.0), tail=(0.2, 0.2), shape="linear")
    assert path.relaxation(0) == Relaxation(lam_scale=0.0, leak=1.0, tail=0.0)
    r = path.relaxation(3)
    assert (r.lam_scale, r.leak, r.tail) == (pytest.approx(0.6), 1.0, 1.0)
    r = path.relaxation(8)
    assert (r.lam_scale, r.leak, r.tail) == (1.0, pytest.approx(0.4), 1.0)
    assert path.relaxation(10).plain and path.relaxation(99).plain
    cosine = ContinuationPath(steps=4, shape="cosine")
    assert cosine.relaxation(1).lam_scale == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    for bad in (dict(steps=0), dict(steps=3, lam=(0.6, 0.4)), dict(steps=3, tail=(0, 2)), dict(steps=3, shape="x")):
        with pytest.raises(ValueError):
            ContinuationPath(**bad)


def test_the_path_needs_csc_layers_in_conv_units():
    source = _source()
    with pytest.raises(ValueError, match="convert the model first"):
        attach(copy.deepcopy(source), ContinuationPath(steps=2), 0)
    code_units = _convert(source, "stem", units="code")
    with pytest.raises(ValueError, match="conv units"):
        attach(code_units, ContinuationPath(steps=2), 0)


def test_a_model_saved_mid_path_loads_exactly_where_it_was(tmp_path, gen):
    model = _convert(_source(), "all").float()
    path = ContinuationPath(steps=10, lam=(0.0, 0.6), shape="cosine")
    attach(model, path, 3)
    x = torch.rand(3, 3, 32, 32, generator=gen)
    with torch.no_grad():
        before = model(x)
    file = csc_cli.save(model, tmp_path / "mid.safetensors", dataset="cifar10", input_size=[3, 32, 32])
    loaded = csc_cli.load(file)
    assert current(loaded) == (path, 3)
    assert loaded.csc_card.continuation == path.record(3)
    with torch.no_grad():
        after = loaded(x)
    assert torch.equal(before, after)
    finish(loaded)  # a finished model's file carries no path
    again = csc_cli.load(csc_cli.save(loaded, tmp_path / "done.safetensors"))
    assert current(again) is None and again.csc_card.continuation is None


def test_a_card_with_a_bad_path_record_is_refused():
    card = ModelCard(arch="resnet20_cifar").to_document()
    good = ContinuationPath(steps=4).record(1)
    ModelCard.from_document({**card, "continuation": good})
    for bad in ({**good, "step": 4}, {**good, "lam": [0.5, 0.1]}, {**good, "extra": 1}, {**good, "step": -1}):
        with pytest.raises(CardError):
            ModelCard.from_document({**card, "continuation": bad})


# ------------------------------------------------------------------ signed codes before residual sums
def test_auto_signs_the_convs_that_reach_a_residual_sum():
    source = _source()
    signs, why = residual_signs(source)
    assert why is None
    signed = sorted(n for n, (s, _) in signs.items() if s)
    # ResNet-20: each block's second conv and the two downsampling shortcut convs feed a sum
    assert signed == sorted([f"layer{s}.{b}.conv2" for s in (1, 2, 3) for b in range(3)]
                            + ["layer2.0.downsample.0", "layer3.0.downsample.0"])
    assert "ReLU follows" in signs["conv1"][1] and "residual sum" in signs["layer1.0.conv2"][1]
    model, plan = convert(copy.deepcopy(source), "all", nonneg="auto", input_size=(3, 32, 32))
    layers = csc_layers(model)
    assert all(layers[n].nonneg == (n not in signed) for n in layers)
    assert all(("signed:" in e.reason) == (e.name in signed) for e in plan.replaced)


def test_auto_signs_fall_back_to_non_negative_when_a_model_cannot_be_traced():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return y + x.mean()
            return y

    signs, why = residual_signs(Branchy())
    assert signs == {} and why
    model, plan = convert(Branchy(), "all", nonneg="auto")
    assert csc_layers(model)["conv"].nonneg is True
    assert any("could not be traced" in n for n in plan.notes)


def test_the_cli_plans_signed_residuals_and_refuses_contradictions(cli, tmp_path):
    source = csc_cli.save(_source().float(), tmp_path / "src.safetensors", dataset="cifar10", input_size=[3, 32, 32])
    code, out, err = cli(["convert", str(source), "--signed-residuals", "--dry-run", "--json"])
    assert code == 0, err
    entries = json.loads(out)["plan"]["entries"]
    assert sum("signed:" in e["reason"] for e in entries) == 11
    code, out, err = cli(["convert", str(source), "--signed", "--signed-residuals", "--dry-run"])
    assert code != 0 and "--signed-residuals" in err and "Traceback" not in err


# ------------------------------------------------------------------ distillation
def test_distillation_loss_equals_a_hand_computed_kl():
    student = torch.tensor([[1.0, -0.5, 2.0], [0.0, 0.3, -1.2]], dtype=torch.float64)
    teacher = torch.tensor([[0.2, 0.1, 1.5], [2.0, -1.0, 0.5]], dtype=torch.float64)
    t = 3.0
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = [math.exp(v / t) for v in s_row]
        zt = [math.exp(v / t) for v in t_row]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        total += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    expected = t * t * total / 2
    assert float(distillation_loss(student, teacher, t)) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-7)


# ------------------------------------------------------------------ training on the path
def _converted_digits(tmp_path):
    source = _source(in_chans=1).float()
    model = convert(source, "all", steps=2, lam=0.1, nonneg="auto", input_size=(1, 16, 16))[0]
    return str(csc_cli.save(model, tmp_path / "conv.safetensors", dataset="digits", input_size=[1, 16, 16]))


def _config(init, out, **extra):
    return TrainConfig(dataset="digits", init=init, epochs=2, batch_size=32, max_batches=4, lr=0.01,
                       continuation=0.75, distill=0.5, out=str(out), seed=3, **extra)


class _Stop(Exception):
    pass


def test_a_run_on_the_path_resumes_exactly_and_ends_plain(tmp_path):
    init = _converted_digits(tmp_path)
    reference = run_train(_config(init, tmp_path / "ref"))
    summary = reference.history and csc_cli.load(reference.model_path).csc_card.training
    assert summary["continuation"]["steps"] == 6 and summary["continuation"]["finished"]
    assert summary["distill"]["weight"] == 0.5
    assert csc_cli.load(reference.model_path).csc_card.continuation is None  # plain CSC layers at the end
    assert any("at the start (the source function)" in n for n in reference.notes)

    def stop(event):  # killed after step 4; the state was written at step 3, mid-path (6 steps)
        if isinstance(event, BatchEnd) and event.epoch == 0 and event.batch == 4:
            raise _Stop

    with pytest.raises(_Stop):
        run_train(_config(init, tmp_path / "run", checkpoint_every=3), stop)
    state = tmp_path / "run" / "state.safetensors"
    resumed = run_train(TrainConfig.from_state(state))
    a, b = load_file(reference.model_path), load_file(resumed.model_path)
    assert a.keys() == b.keys()
    assert not [k for k in a if not torch.equal(a[k], b[k])]


def test_an_init_file_saved_mid_path_and_misuse_are_refused_in_one_line(tmp_path, cli):
    init = _converted_digits(tmp_path)
    model = csc_cli.load(init)
    attach(model, ContinuationPath(steps=5), 2)
    mid = csc_cli.save(model, tmp_path / "mid.safetensors")
    code, _, err = cli(["train", "digits", "--init", str(mid), "--epochs", "1", "--out", str(tmp_path / "a")])
    assert code != 0 and "continuation" in err and "Traceback" not in err
    code, _, err = cli(["train", "digits", "--continuation", "0.5", "--epochs", "1", "--out", str(tmp_path / "b")])
    assert code != 0 and "--init" in err and "Traceback" not in err
    code, _, err = cli(["train", "digits", "--distill", "0.5", "--epochs", "1", "--out", str(tmp_path / "c")])
    assert code != 0 and "teacher" in err and "Traceback" not in err


def test_the_default_teacher_is_the_source_function_even_without_a_path(gen):
    """--distill without --continuation: the teacher is still the ConvNet the --init file was
    converted from (its layers at the path's start), not the converted model itself."""
    from types import SimpleNamespace

    from csc_cli.jobs.classifier.train import ClassifierTraining

    source = _source()
    family = ClassifierTraining()
    family.model = _convert(source, "all")
    teacher = ClassifierTraining._teacher(family, SimpleNamespace(teacher=None), SimpleNamespace(device="cpu"))
    x = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), source(x), rtol=0, atol=1e-12)
        assert (family.model(x) - source(x)).abs().max() > 1e-3  # the student is not touched
    assert current(family.model) is None and not any(p.requires_grad for p in teacher.parameters())
