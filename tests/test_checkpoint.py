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
    assert doc["format_version"] == 2 and doc["arch"] == "resnet20_cifar" and doc["task"] == "classifier"
    assert [(e["op"], e["target"]) for e in doc["edits"]] == [("to_csc", "conv1"), ("identity", "act1")]
    assert isinstance(model.act1, torch.nn.Identity) and type(model.conv1).__name__ == "CSCConv2d"
    assert sum(p.numel() for p in model.parameters()) == 272474
    assert model.csc_card.data.class_names == [str(i) for i in range(10)]


def _conv1(d):
    return next(e for e in d["edits"] if e["target"] == "conv1")


def _with_conv1(d, **changes):
    return {**d, "edits": [{**e, **changes} if e["target"] == "conv1" else e for e in d["edits"]]}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: {**d, "format": "pickle"}, "not a csc model file"),
        (lambda d: {**d, "format_version": 99}, "format version 99"),
        (lambda d: {**d, "format_version": True}, "format version True"),
        (lambda d: {**d, "arch": "resnet_from_the_internet"}, "unknown architecture"),
        (lambda d: {**d, "arch": ["resnet18"]}, "'arch' must be"),
        (lambda d: {**d, "model_kwargs": {"pretrained_cfg_overlay": {"url": "http://x"}}}, "is not allowed"),
        (lambda d: {**d, "model_kwargs": {"num_classes": "10"}}, "bad value"),
        (lambda d: {**d, "model_kwargs": {"num_classes": 10**12}}, "bad value"),
        (lambda d: _with_conv1(d, layer="os.system"), "'layer' must be one of"),
        (lambda d: _with_conv1(d, op="exec"), "'op' must be one of"),
        (lambda d: _with_conv1(d, code="print(1)"), "unknown fields"),
        (lambda d: _with_conv1(d, options={"lam": 0.1, "exec": "rm -rf /"}), "unknown CSC options"),
        (lambda d: _with_conv1(d, options={"lam": "0.1"}), "bad value"),
        (lambda d: _with_conv1(d, options={"lam": -1.0}), "lam must be"),
        (lambda d: _with_conv1(d, target="conv9"), "no such module"),
        (lambda d: _with_conv1(d, target="fc"), "not a convertible convolution"),
        (lambda d: _with_conv1(d, geometry={**_conv1(d)["geometry"], "stride": [2, 2]}), "geometry is not the recorded"),
        (lambda d: _with_conv1(d, geometry={**_conv1(d)["geometry"], "groups": "all"}), "bad geometry"),
        (lambda d: {**d, "edits": d["edits"] + [{"op": "identity", "target": "layer9.act"}]}, "no such module"),
        (lambda d: {**d, "edits": "conv1"}, "'edits' must be a list"),
        (lambda d: {**d, "task": "shell"}, "'task' must be one of"),
        (lambda d: {**d, "data": {**d["data"], "mean": [0.5], "std": [0.0]}}, "'std' must be positive"),
        (lambda d: {**d, "data": {**d["data"], "url": "http://x"}}, "unknown fields"),
        (lambda d: {**d, "notes": "free text"}, "'notes' must be an object"),
        (lambda d: [d], "must be a JSON object"),
    ],
)
def test_hostile_or_broken_metadata_is_refused_clearly(good, tmp_path, mutate, message):
    _, doc, tensors = good
    path = _write(tmp_path, tensors, mutate(json.loads(json.dumps(doc))))
    with pytest.raises(ModelFileError, match=message.replace("(", r"\(")) as exc:
        csc_cli.load(path)
    assert "\n" not in str(exc.value)


def _v1_document(model, info):
    """The metadata csc 0.1.0 wrote before the model card (format version 1), made by hand here
    from its documented fields."""
    layers = {n: {"class": type(m).__name__, "geometry": m.geometry_record(), "options": m.csc_options(), "aliases": []}
              for n, m in csc_cli.csc_layers(model).items()}
    constructed = ["maxpool"] if "maxpool" in layers else []
    identities = [e.target for e in model.csc_card.edits if e.op == "identity"]
    return {"format": "csc-model", "format_version": 1, "csc_version": "0.1.0", "arch": model.csc_card.arch,
            "model_kwargs": dict(model.csc_card.model_kwargs), "reparameterized": False,
            "identity_modules": identities, "constructed_layers": constructed, "csc_layers": layers, "info": info}


@pytest.mark.parametrize("arch, csc", [("resnet20_cifar", "stem"), ("resnet18", "all")])
def test_files_of_format_version_1_still_load(tmp_path, arch, csc):
    """A file as csc 0.1.0 wrote it (flat fields + free-form info) loads into the same model, with
    its normalisation, dataset and lambda rule moved into the card; saving it again writes format 2."""
    torch.manual_seed(0)
    model = build_model(arch, 10, csc=csc).eval()
    info = {"normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}, "dataset": "cifar10",
            "class_names": list("abcdefghij"), "input_size": [3, 32, 32], "training": {"epochs": 1},
            "lambda_rule": {"layer": "conv1"}, "converted_from": "timm:x"}
    path = tmp_path / "v1.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"csc": json.dumps(_v1_document(model, info))})
    loaded = csc_cli.load(path)
    card = loaded.csc_card
    assert card.data.dataset == "cifar10" and card.data.mean == (0.5, 0.4, 0.3) and card.data.input_size == (3, 32, 32)
    assert card.training == {"epochs": 1} and card.lambda_rule == {"layer": "conv1"}
    assert card.notes == {"converted_from": "timm:x"}
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(info["normalization"]["mean"]), torch.tensor(info["normalization"]["std"])
    expected = model((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert torch.equal(loaded(x), expected)  # same modules, same weights, normalisation inside
    again = csc_cli.save(loaded, tmp_path / "v2.safetensors")
    assert csc_cli.read_metadata(again)["format_version"] == 2
    assert torch.equal(csc_cli.load(again)(x), expected)


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
