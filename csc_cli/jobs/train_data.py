"""The data of a training run, for either task family: training, test and held-out batches.

:func:`make_data` reads ``config.dataset`` (in memory, or streamed from an image folder) into a
:class:`DataBundle`: seeded, shuffled, augmented and sharded training batches, the test split, a
held-out part of the training split (``val_split``) and a few probe images for per-layer statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Tuple

import torch

from ..data import load_dataset
from ..data.pipeline import Batches, default_augment, default_pad, split_holdout
from ..data.source import folder_root, is_streamed
from .train_config import TrainConfig

__all__ = ["DataBundle", "make_data"]


@dataclass
class DataBundle:
    train: Any
    test: Any
    val: Any
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    class_names: List[str]
    input_size: Tuple[int, ...]
    probe: torch.Tensor  # a few test images in [0, 1], for per-layer statistics
    train_images: int
    notes: List[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def make_data(config: TrainConfig, rank: int = 0, world_size: int = 1) -> DataBundle:
    """Training, test and (optional) held-out batches for ``config.dataset``."""
    eval_batch = max(config.batch_size, 128)
    augment = default_augment(config.dataset) if config.augment == "auto" else config.augment
    if is_streamed(config.dataset):
        from ..data.folder import IMAGENET_MEAN, IMAGENET_STD, FolderBatches

        root = folder_root(config.dataset, Path(config.data_dir) if config.data_dir else None)
        if config.dataset == "imagenet" and config.augment == "auto":
            augment = "imagenet"
        size = config.image_size or 224
        common = dict(root=root, image_size=size, seed=config.seed, workers=config.workers)
        train = FolderBatches(split="train", batch_size=config.batch_size, training=True, augment=augment,
                              shuffle=True, drop_last=True, rank=rank, world_size=world_size,
                              noise=config.noise_augment, **common)
        val = None
        if config.val_split > 0:
            n = len(train.dataset)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + 17))
            n_val = max(1, int(round(config.val_split * n)))
            train.subset = order[n_val:]
            val = FolderBatches(split="train", batch_size=eval_batch, subset=order[:n_val], **common)
        test = FolderBatches(split="val", batch_size=eval_batch, **common)
        notes = _keep_a_partial_batch(train, config.batch_size)
        return DataBundle(train, test, val, IMAGENET_MEAN, IMAGENET_STD, train.class_names, (3, size, size),
                          test.head(16), len(train._indices(0)) * world_size, notes)
    root = Path(config.data_dir) if config.data_dir else None
    train_data = load_dataset(config.dataset, "train", root, image_size=config.image_size)
    test_data = load_dataset(config.dataset, "test", root, image_size=config.image_size)
    train_x, train_y = train_data.images, train_data.labels
    val = None
    if config.val_split > 0:
        train_x, train_y, val_x, val_y = split_holdout(train_x, train_y, config.val_split, config.seed)
        val = Batches(val_x, val_y, eval_batch)
    train = Batches(train_x, train_y, config.batch_size, shuffle=True, augment=augment,
                    pad=default_pad(config.dataset, config.image_size), seed=config.seed,
                    drop_last=train_x.shape[0] > config.batch_size, rank=rank, world_size=world_size,
                    noise=config.noise_augment)
    test = Batches(test_data.images, test_data.labels, eval_batch)
    notes = _keep_a_partial_batch(train, config.batch_size)
    return DataBundle(train, test, val, train_data.mean, train_data.std, train_data.class_names,
                      tuple(train_x.shape[1:]), test_data.images[:64], int(train_x.shape[0]), notes)


def _keep_a_partial_batch(train, batch_size: int) -> List[str]:
    """A training split (per process) smaller than one batch would give zero steps per epoch with
    the last partial batch dropped: train on that partial batch instead, and say so. BatchNorm
    cannot train on a single image, so fewer than two are refused."""
    per_process = int(train._indices(0).shape[0])
    if per_process < 2:
        raise ValueError(f"the training split has {per_process} image(s) per process: training needs at least 2")
    if len(train) > 0:
        return []
    train.drop_last = False
    return [f"the training split has {per_process} images per process, fewer than one batch of {batch_size}: "
            f"each epoch is one step on a partial batch of {per_process} (give a smaller --batch-size)"]
