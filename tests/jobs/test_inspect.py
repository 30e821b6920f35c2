"""csc inspect: pictures and numbers of a trained sparse model, and of a plain one."""

import json
from pathlib import Path

import pytest
from PIL import Image

from csc_cli.jobs.classifier.inspect import InspectConfig, coherence, run_inspect, shift_coherence
from csc_cli.jobs.train import TrainConfig, run_train

KEYS = {"model", "card", "atoms", "codes", "sparsity_vs_lambda", "reconstruction", "pushback", "convergence",
        "images", "notes"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    out = {}
    for name, kwargs in {"stem": dict(csc="stem"), "all": dict(csc="all", shortcut=False), "plain": dict(csc="none")}.items():
        out[name] = run_train(TrainConfig(epochs=2, out=str(root / name), **kwargs)).model_path
    return out


def test_inspect_a_trained_sdnet(models, tmp_path):
    r = run_inspect(InspectConfig(model=models["stem"], out=str(tmp_path / "a"), images=32, max_steps=30)).to_dict()
    assert set(r) == KEYS
    for path in r["images"]:
        with Image.open(path) as im:
            assert im.size[0] >= 30 and im.size[1] >= 30
    with Image.open(r["atoms"]["conv1"]["file"]) as im:
        assert list(im.size) == r["atoms"]["conv1"]["size"]
    card = r["card"]["csc_layers"][0]
    assert card["name"] == "conv1" and card["atoms_unit_norm"] and card["step_size"] > 0 and 0 < card["coherence"] <= 1
    assert card["shift_coherence"] >= card["coherence"] - 1e-9
    nonzero = r["sparsity_vs_lambda"]["layers"]["conv1"]
    assert all(b < a for a, b in zip(nonzero, nonzero[1:]))  # sparser codes as lambda grows
    gap = r["convergence"]["layers"]["conv1"]["relative_gap"]
    assert gap[-1] < gap[0] and gap[-1] < gap[1]  # more steps, closer to the converged code
    assert r["reconstruction"]["layers"]["conv1"]["relative_error"] < 1  # below the input's energy
    assert r["pushback"] is None and any("push-back" in n for n in r["notes"])
    assert len(r["codes"]["layers"]["conv1"]["per_channel_nonzero"]) == 16


def test_pushback_on_an_all_csc_no_shortcut_model(models, tmp_path):
    r = run_inspect(InspectConfig(model=models["all"], out=str(tmp_path / "b"), images=16, max_steps=5)).to_dict()
    pb = r["pushback"]
    assert pb["layers"][0] == "conv1" and len(pb["layers"]) == 19 and Path(pb["file"]).exists()
    errors = list(pb["relative_error"].values())
    assert errors[0] < 1 and errors[0] < errors[-1]  # early layers reconstruct, deep ones blur


def test_deterministic_given_the_seed(models, tmp_path):
    runs = [run_inspect(InspectConfig(model=models["stem"], out=str(tmp_path / f"d{i}"), images=8, max_steps=5,
                                      seed=3)).to_dict() for i in range(2)]
    for r in runs:
        r.pop("images")
        r["atoms"] = {k: {kk: vv for kk, vv in v.items() if kk != "file"} for k, v in r["atoms"].items()}
        r["reconstruction"].pop("stem_file", None)
    assert json.dumps(runs[0], sort_keys=True) == json.dumps(runs[1], sort_keys=True)


def test_plain_model_shows_what_applies(models, tmp_path, cli):
    code, out, err = cli(["inspect", models["plain"], "--out", str(tmp_path / "p"), "--json"])
    assert code == 0, err
    r = json.loads(out)
    assert r["codes"] is None and r["convergence"] is None and "first_conv" in r["atoms"]
    assert r["atoms"]["first_conv"]["dictionary"] is False and any("plain ConvNet" in n for n in r["notes"])


def test_image_files_and_layers(models, tmp_path, cli):
    img = tmp_path / "x.png"
    Image.new("L", (20, 20), color=128).save(img)
    code, out, err = cli(["inspect", models["stem"], "--image", str(img), "--out", str(tmp_path / "i"), "--json",
                          "--max-steps", "3"])
    assert code == 0, err
    assert json.loads(out)["codes"]["images"] == "1 image file(s)"


@pytest.mark.parametrize("name, message", [("missing.safetensors", "does not exist"),
                                           ("junk.safetensors", "not a safetensors")])
def test_bad_model_files(name, message, tmp_path, cli):
    if name.startswith("junk"):
        (tmp_path / name).write_text("junk")
    code, _, err = cli(["inspect", str(tmp_path / name), "--out", str(tmp_path / "o")])
    assert code == 1 and message in err and "Traceback" not in err


def test_bad_image_and_layer(models, tmp_path, cli):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    code, _, err = cli(["inspect", models["stem"], "--image", str(bad), "--out", str(tmp_path / "o")])
    assert code == 1 and "cannot read image" in err
    code, _, err = cli(["inspect", models["stem"], "--layer", "layer9.conv", "--out", str(tmp_path / "o")])
    assert code == 1 and "names no CSC layer" in err and "conv1" in err


def test_coherence_numbers():
    import torch

    eye = torch.eye(4).view(4, 1, 2, 2)
    assert coherence(eye) == 0.0
    assert shift_coherence(eye) == pytest.approx(1.0)  # a delta shifted onto another delta
    same = torch.ones(2, 1, 3, 3)
    assert coherence(same) == pytest.approx(1.0)
