"""Image folders (ImageNet layout): seeded, worker-independent, resumable batches; training on one."""

import pytest
import torch

from csc_cli.data.folder import FolderBatches
from csc_cli.jobs.train import TrainConfig, run_train
from tests.data.conftest import write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs"), {"train": 12, "val": 4})


def test_batches_do_not_depend_on_workers_and_resume_mid_epoch(folder):
    def batches(workers, start=0):
        b = FolderBatches(folder, "train", 5, training=True, augment="imagenet", image_size=32, shuffle=True,
                          seed=4, workers=workers)
        return list(b.epoch(1, start))

    a, b = batches(0), batches(2)
    assert len(a) == 8 and a[0][0].shape == (5, 3, 32, 32)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    tail = batches(0, start=3)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a[3:], tail))
    rng = torch.get_rng_state()
    batches(0)
    assert torch.equal(rng, torch.get_rng_state())  # augmentation leaves the caller's RNG alone


def test_eval_transform_is_resize_and_centre_crop(folder):
    b = FolderBatches(folder, "val", 4, image_size=32)
    x, y = next(b.epoch(0))
    assert x.shape == (4, 3, 32, 32) and b.class_names == ["class0", "class1", "class2"]


@pytest.mark.slow
def test_train_on_a_folder(folder, tmp_path):
    cfg = TrainConfig(dataset=f"folder:{folder}", arch="resnet20_cifar", image_size=32, epochs=2, batch_size=6,
                      val_split=0.25, out=str(tmp_path / "f"))
    result = run_train(cfg)
    assert len(result.history) == 2 and "val_acc" in result.history[-1] and result.history[-1]["test_loss"] > 0
