"""Model files: self-describing, round-tripping, and refusing hostile or broken metadata clearly."""

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import csc_cli
from csc_cli import ModelFileError
from csc_cli.models import build_model


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "good.safetensors"
    model = build_model("resnet20_cifar", 10, csc="stem").eval()
    csc_cli.save(model, path, class_names=[str(i) for i in range(10)])
    with safe_open(str(path), framework="pt") as fh:
        doc = json.loads(fh.metadata()["csc"])
    return path, doc, load_file(str(path))


def _write(tmp_path, tensors, doc, name="bad.safetensors"):
    path = tmp_path / name
    text = doc if isinstance(doc, str) else json.dumps(doc)
    save_file(tensors, str(path), metadata={"csc": text})
    return path


def test_good_file_round_trips(good):
    path, doc, _ = good
    model = csc_cli.load(path)
    assert doc["arch"] == "resnet20_cifar" and "conv1" in doc["csc_layers"] and doc["identity_modules"] == ["act1"]
    assert isinstance(model.act1, torch.nn.Identity) and type(model.conv1).__name__ == "CSCConv2d"
    assert sum(p.numel() for p in model.parameters()) == 272474


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: {**d, "format": "pickle"}, "not a csc model file"),
        (lambda d: {**d, "format_version": 99}, "format version 99"),
        (lambda d: {**d, "arch": "resnet_from_the_internet"}, "unknown architecture"),
        (lambda d: {**d, "arch": ["resnet18"]}, "'arch' must be"),
        (lambda d: {**d, "model_kwargs": {"pretrained_cfg_overlay": {"url": "http://x"}}}, "is not allowed"),
        (lambda d: {**d, "model_kwargs": {"num_classes": "10"}}, "bad value"),
        (lambda d: {**d, "model_kwargs": {"num_classes": 10**12}}, "bad value"),
        (lambda d: {**d, "csc_layers": {"conv1": {**d["csc_layers"]["conv1"], "class": "os.system"}}}, "no valid class"),
        (lambda d: {**d, "csc_layers": {"conv1": {**d["csc_layers"]["conv1"],
                                                  "options": {"lam": 0.1, "exec": "rm -rf /"}}}}, "unknown options"),
        (lambda d: {**d, "csc_layers": {"conv1": {**d["csc_layers"]["conv1"], "options": {"lam": "0.1"}}}}, "bad value"),
        (lambda d: {**d, "csc_layers": {"conv1": {**d["csc_layers"]["conv1"], "options": {"lam": -1.0}}}}, "lam must be"),
        (lambda d: {**d, "csc_layers": {"conv9": d["csc_layers"]["conv1"]}}, "does not exist"),
        (lambda d: {**d, "csc_layers": {"fc": d["csc_layers"]["conv1"]}}, "not a convertible convolution"),
        (lambda d: {**d, "csc_layers": {"conv1": {**d["csc_layers"]["conv1"],
                                                  "geometry": {**d["csc_layers"]["conv1"]["geometry"], "stride": [2, 2]}}}},
         "does not match the geometry"),
        (lambda d: {**d, "identity_modules": ["layer9.act"]}, "does not exist"),
        (lambda d: {**d, "constructed_layers": ["maxpool"]}, "no CSC layer record"),
        (lambda d: {**d, "info": "free text"}, "'info' must be an object"),
        (lambda d: [d], "must be a JSON object"),
    ],
)
def test_hostile_or_broken_metadata_is_refused_clearly(good, tmp_path, mutate, message):
    _, doc, tensors = good
    path = _write(tmp_path, tensors, mutate(json.loads(json.dumps(doc))))
    with pytest.raises(ModelFileError, match=message.replace("(", r"\(")) as exc:
        csc_cli.load(path)
    assert "\n" not in str(exc.value)


def test_tensors_that_do_not_fit_are_refused(good, tmp_path):
    _, doc, tensors = good
    partial = {k: v for k, v in tensors.items() if not k.startswith("fc.")}
    with pytest.raises(ModelFileError, match="do not fit"):
        csc_cli.load(_write(tmp_path, partial, doc))
    wrong = dict(tensors)
    wrong["fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(ModelFileError, match="do not fit"):
        csc_cli.load(_write(tmp_path, wrong, doc, "wrong.safetensors"))


def test_files_that_are_not_model_files(tmp_path):
    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFileError, match="not a safetensors model file"):
        csc_cli.load(pickled)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelFileError, match="without csc metadata"):
        csc_cli.load(plain)
    with pytest.raises(ModelFileError, match="does not exist"):
        csc_cli.load(tmp_path / "missing.safetensors")
    with pytest.raises(ModelFileError, match="is a directory"):
        csc_cli.load(tmp_path)


def test_save_is_atomic_and_refuses_unserialisable_metadata(tmp_path):
    model = build_model("resnet20_cifar", 10, csc="none")
    path = csc_cli.save(model, tmp_path / "m.safetensors")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="JSON-serialisable"):
        csc_cli.save(model, path, training={"when": object()})
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def test_a_model_with_no_recorded_architecture_cannot_be_saved(tmp_path):
    with pytest.raises(ValueError, match="cannot tell which architecture"):
        csc_cli.save(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3)), tmp_path / "x.safetensors")
