"""Datasets by name, as tensors of raw images in [0, 1] plus the constants to normalise them.

``digits`` (scikit-learn's bundled 8x8 digits, upsampled: works offline), ``cifar10``/``cifar100``
(torchvision's on-disk layout, downloaded when a network is there, any subset of batch files
accepted, never unpickling arbitrary objects) and ``fake`` (seeded noise, for smoke tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .digits import load_digits

__all__ = ["ImageData", "DATASETS", "NORMALIZATION", "load_dataset", "load_digits"]

#: (mean, std) per dataset, per channel. CIFAR: the SDNet authors' constants (Dai et al., NeurIPS 2022).
NORMALIZATION = {
    "digits": ((0.3053,), (0.3189,)),  # measured on the 1797 digits upsampled to 16x16
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "fake": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
DATASETS = ("digits", "cifar10", "cifar100", "fake")


@dataclass
class ImageData:
    """A split of a dataset held in memory: ``images`` are float32 in [0, 1], ``(N, C, H, W)``."""

    name: str
    split: str
    images: Tensor
    labels: Tensor
    class_names: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, images: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std


def _split_digits(split: str, image_size: int) -> Tuple[Tensor, Tensor]:
    images, labels = load_digits(image_size)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    n_test = images.shape[0] // 5  # a fixed, seeded 80/20 split
    idx = order[:n_test] if split == "test" else order[n_test:]
    return images[idx], labels[idx]


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: Optional[Path] = None,
    *,
    download: bool = True,
    image_size: Optional[int] = None,
    fake_size: int = 256,
) -> ImageData:
    """Load ``split`` ('train' or 'test') of dataset ``name``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        size = image_size or 16
        images, labels = _split_digits(split, size)
        return ImageData(name, split, images, labels, [str(i) for i in range(10)], *NORMALIZATION[name])
    if name == "fake":
        size = image_size or 32
        gen = torch.Generator().manual_seed(0 if split == "train" else 1)
        images = torch.rand(fake_size, 3, size, size, generator=gen)
        labels = torch.randint(0, 10, (fake_size,), generator=gen)
        return ImageData(name, split, images, labels, [str(i) for i in range(10)], *NORMALIZATION[name])
    if name in ("cifar10", "cifar100"):
        from .cifar import download_cifar, find_root, load_cifar

        root = Path(data_dir) if data_dir is not None else Path("data")
        if find_root(name, root) is None and download:
            try:
                download_cifar(name, root)
            except Exception as exc:  # noqa: BLE001 - offline shows up as many error types
                raise FileNotFoundError(
                    f"{name} is not under {root} and could not be downloaded ({type(exc).__name__}); "
                    f"give --data-dir with the extracted batches"
                ) from None
        raw, labels, names = load_cifar(name, root, split)
        images = raw.float().div_(255.0)
        return ImageData(name, split, images, labels, names, *NORMALIZATION[name])
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
