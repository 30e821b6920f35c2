"""One dataset resolver for every job: ``open_split(dataset, split)`` -> a :class:`Split` that
yields raw [0, 1] image batches, from memory (digits, CIFAR, fake) or streamed from disk
(``imagenet``, ``folder:PATH``: decoded batch by batch, never the whole split at once).

``open_for_model(card, split)`` reads a model's data the way its card says: the dataset it was
trained on (or the one given), its input size and evaluation transform (shorter side resized, centre
crop to the input size, for image-file datasets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["Split", "open_split", "open_for_model", "is_streamed", "folder_root"]


def is_streamed(dataset: str) -> bool:
    """Datasets read from image files batch by batch (the others are held in memory)."""
    return dataset == "imagenet" or dataset.startswith("folder:")


def folder_root(dataset: str, data_dir: Optional[Path]) -> Path:
    """Where an image-folder dataset lives: ``folder:PATH`` names it, ``imagenet`` is under
    ``--data-dir`` (default ``data/imagenet``); ``--data-dir`` overrides a folder's recorded PATH."""
    if dataset.startswith("folder:"):
        return Path(data_dir) if data_dir is not None else Path(dataset[len("folder:"):])
    return Path(data_dir) if data_dir is not None else Path("data/imagenet")


class Split:
    """One split of a dataset: ``len(split)`` examples, ``class_names``, ``input_size`` (C, H, W),
    ``batches(batch_size, indices)`` of raw images and labels, ``take(indices)`` for a few."""

    name: str
    split: str
    class_names: List[str]
    input_size: Tuple[int, int, int]
    streamed: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self, batch_size: int, indices: Optional[Tensor] = None) -> Iterator[Tuple[Tensor, Tensor]]:
        raise NotImplementedError  # pragma: no cover - abstract

    def take(self, indices: Tensor) -> Tuple[Tensor, Tensor]:
        """The examples at ``indices``, in memory (a sample, not a split)."""
        xs, ys = [], []
        for x, y in self.batches(256, indices):
            xs.append(x)
            ys.append(y)
        return torch.cat(xs), torch.cat(ys)

    def sample(self, n: Optional[int], seed: int) -> Optional[Tensor]:
        """Sorted indices of a seeded random sample of ``n`` examples (None: all of them)."""
        if n is None or n >= len(self):
            return None
        return torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values

    def labels(self, indices: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract


class MemorySplit(Split):
    def __init__(self, data) -> None:
        self.data = data
        self.name, self.split, self.class_names = data.name, data.split, list(data.class_names)
        self.input_size = tuple(data.images.shape[1:])
        self.images = data.images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int, indices: Optional[Tensor] = None) -> Iterator[Tuple[Tensor, Tensor]]:
        images, labels = self.data.images, self.data.labels
        if indices is not None:
            images, labels = images[indices], labels[indices]
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size], labels[start : start + batch_size]

    def take(self, indices: Tensor) -> Tuple[Tensor, Tensor]:
        return self.data.images[indices], self.data.labels[indices]

    def labels(self, indices: Optional[Tensor] = None) -> Tensor:
        return self.data.labels if indices is None else self.data.labels[indices]


class FolderSplit(Split):
    """An ImageFolder split decoded batch by batch with the evaluation transform."""

    streamed = True

    def __init__(self, name: str, root: Path, split: str, image_size: int, resize: Optional[int], workers: int) -> None:
        from torchvision import transforms as T
        from torchvision.datasets import ImageFolder

        from .folder import find_split

        self.name, self.split = name, split
        folder = find_split(root, split)
        size = int(image_size)
        resize = int(resize or round(size / 0.875))  # 256 for 224: the ImageNet evaluation protocol
        self.folder = ImageFolder(str(folder), transform=T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor()]))
        if len(self.folder) == 0:
            raise FileNotFoundError(f"no images under {folder}")
        self.class_names = list(self.folder.classes)
        self.input_size = (3, size, size)
        self.workers = workers
        self.decoded = 0  # images decoded so far (tests check that a job never reads the whole split)

    def __len__(self) -> int:
        return len(self.folder)

    def batches(self, batch_size: int, indices: Optional[Tensor] = None) -> Iterator[Tuple[Tensor, Tensor]]:
        from torch.utils.data import DataLoader, Subset

        dataset = self.folder if indices is None else Subset(self.folder, indices.tolist())
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.workers)
        for x, y in loader:
            self.decoded += int(x.shape[0])
            yield x, y

    def labels(self, indices: Optional[Tensor] = None) -> Tensor:
        targets = torch.tensor(self.folder.targets)
        return targets if indices is None else targets[indices]


def open_split(dataset: str, split: str = "test", data_dir: Optional[Path] = None, *,
               image_size: Optional[int] = None, resize: Optional[int] = None, workers: int = 0,
               download: bool = True) -> Split:
    """``split`` ('train' or 'test'; a folder's test split is its ``val/``) of ``dataset``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if is_streamed(dataset):
        return FolderSplit(dataset, folder_root(dataset, data_dir), split, image_size or 224, resize, workers)
    from . import load_dataset

    return MemorySplit(load_dataset(dataset, split, Path(data_dir) if data_dir else None, download=download,
                                    image_size=image_size))


def open_for_model(card, split: str = "test", dataset: Optional[str] = None, data_dir: Optional[Path] = None,
                   workers: int = 0) -> Split:
    """The data a model with ``card`` reads: ``dataset`` (default: the card's) at the card's input
    size and evaluation transform."""
    name = dataset or card.data.dataset
    if not name:
        raise ValueError("the model file does not say which dataset it was trained on: give DATASET")
    size = card.data.input_size[-1] if card.data.input_size else None
    return open_split(name, split, data_dir, image_size=size, resize=card.data.resize, workers=workers)
