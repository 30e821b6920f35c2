"""One dataset resolver (csc_cli.data.source): every job reads any model's data the same way, and
an image-folder split is streamed in batches, never loaded whole."""

import json

import pytest
import torch

import csc_cli
from csc_cli.data import load_dataset
from csc_cli.data.source import FolderSplit, folder_root, open_for_model, open_split
from tests.data.conftest import write_image_folder

N_VAL = 8  # per class


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs"), {"train": 10, "val": N_VAL})


@pytest.fixture
def reads(monkeypatch):
    """Every batch a FolderSplit decodes: (split, batch size)."""
    seen = []
    real = FolderSplit.batches

    def spy(self, batch_size, indices=None):
        for x, y in real(self, batch_size, indices):
            seen.append((self.split, int(x.shape[0])))
            yield x, y

    monkeypatch.setattr(FolderSplit, "batches", spy)
    return seen


def test_memory_split_matches_load_dataset():
    split = open_split("digits", "test")
    data = load_dataset("digits", "test")
    x, y = split.take(torch.tensor([3, 1, 4]))
    assert torch.equal(x, data.images[[3, 1, 4]]) and torch.equal(y, data.labels[[3, 1, 4]])
    batches = list(split.batches(100))
    assert torch.equal(torch.cat([b[0] for b in batches]), data.images) and max(b[0].shape[0] for b in batches) == 100
    assert not split.streamed and split.input_size == (1, 16, 16) and len(split) == data.images.shape[0]


def test_folder_split_streams_with_the_evaluation_transform(folder):
    split = open_split(f"folder:{folder}", "test", image_size=32)
    assert split.streamed and len(split) == 3 * N_VAL and split.class_names == ["class0", "class1", "class2"]
    batches = list(split.batches(5))
    assert [b[0].shape[0] for b in batches] == [5, 5, 5, 5, 4] and batches[0][0].shape[1:] == (3, 32, 32)
    x, y = split.take(torch.tensor([0, 9, 23]))
    assert torch.equal(x[1], batches[1][0][4]) and y.tolist() == [0, 1, 2]
    assert torch.equal(split.labels(), torch.cat([b[1] for b in batches]))
    assert folder_root(f"folder:{folder}", None) == folder and folder_root("imagenet", folder) == folder


def test_open_for_model_follows_the_card(folder):
    model = csc_cli.build_model("resnet20_cifar", 3, csc="stem")
    with pytest.raises(ValueError, match="give DATASET"):
        open_for_model(model.csc_card)
    model.csc_card.update(dataset=f"folder:{folder}", input_size=[3, 24, 24])
    split = open_for_model(model.csc_card, "train")
    assert split.input_size == (3, 24, 24) and len(split) == 30


@pytest.mark.slow
def test_folder_trained_model_goes_through_eval_attack_and_inspect(folder, tmp_path, cli, reads):
    """csc train folder:PATH (1 epoch), then eval, attack and inspect on the model file with no
    dataset argument: each reads the folder from the card, in batches -- eval streams the split
    (no batch larger than --batch-size), attack and inspect decode only the examples they use."""
    code, out, err = cli(["train", f"folder:{folder}", "--arch", "resnet20_cifar", "--image-size", "32",
                          "--epochs", "1", "--batch-size", "6", "--out", str(tmp_path / "run")])
    assert code == 0, err
    model_path = tmp_path / "run" / "model.safetensors"
    card = csc_cli.load(model_path).csc_card
    assert card.data.dataset == f"folder:{folder}" and card.data.input_size == (3, 32, 32)
    assert card.data.class_names == ["class0", "class1", "class2"] and card.data.mean is not None

    reads.clear()
    code, out, err = cli(["eval", str(model_path), "--batch-size", "5", "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["images"] == 3 * N_VAL and result["dataset"] == f"folder:{folder}"
    assert {s for s, _ in reads} == {"test"} and sum(n for _, n in reads) == 3 * N_VAL
    assert max(n for _, n in reads) == 5  # streamed: never more than one batch in memory

    reads.clear()
    code, out, err = cli(["attack", str(model_path), "--n", "6", "--attacks", "pgd", "--steps", "3", "--no-sanity",
                          "--modes", "unrolled", "--json"])
    assert code == 0, err
    assert json.loads(out)["n"] == 6 and sum(n for _, n in reads) == 6  # only the attacked examples

    reads.clear()
    code, out, err = cli(["inspect", str(model_path), "--images", "4", "--out", str(tmp_path / "ins"), "--json"])
    assert code == 0, err
    assert sum(n for _, n in reads) == 4 and (tmp_path / "ins" / "reconstruction_stem.png").exists()
