"""Batches for training and evaluation: in-memory image tensors, seeded and resumable.

Every epoch's order and every augmentation draw come from a generator seeded by
``(seed, epoch)``, so a run resumed at any step sees exactly the batches an uninterrupted run
would; under distributed training each rank takes its own slice of the same permutation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..choices import AUGMENTATIONS


@dataclass
class Batches:
    """Iterate ``(images, labels)`` batches of an in-memory split.

    ``augment``: 'none', 'crop' (random crop after zero padding by ``pad``), 'crop_flip' (plus a
    horizontal flip, CIFAR's), or 'imagenet' (random resized crop to the image size + flip).
    ``noise``: after the augmentation, gaussian noise of a per-image standard deviation drawn
    uniformly from ``[0, noise]`` (pixels in [0, 1], clipped back to it; :func:`add_noise`).
    """

    images: Tensor  # float32 in [0, 1], (N, C, H, W)
    labels: Tensor
    batch_size: int
    shuffle: bool = False
    augment: str = "none"
    pad: int = 4
    seed: int = 0
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    noise: float = 0.0

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        check_noise(self.noise)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")

    def _indices(self, epoch: int) -> Tensor:
        n = self.images.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:  # the same padded permutation on every rank, one slice each
            per_rank = -(-n // self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - n]])
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = self._indices(0).shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Tuple[Tensor, Tensor]]:
        """The batches of ``epoch``, from batch ``start_batch`` on (for a resumed run)."""
        order = self._indices(epoch)
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment != "none" or self.noise:
                gen = torch.Generator().manual_seed((self.seed * 100003 + epoch) * 7919 + b)
                if self.augment != "none":
                    x = augment_batch(x, self.augment, self.pad, gen)
                if self.noise:
                    x = add_noise(x, self.noise, gen)
            yield x, self.labels[idx]


def check_noise(noise: float) -> None:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 1:
        raise ValueError(f"the noise augmentation's largest sigma must be in [0, 1] (pixels in [0, 1]), got {noise!r}")


def add_noise(x: Tensor, max_sigma: float, gen: torch.Generator) -> Tensor:
    """Gaussian noise augmentation: each image gets ``N(0, s^2)`` per pixel with its own ``s`` drawn
    uniformly from ``[0, max_sigma]`` (CIFAR-10-C's gaussian_noise severities are s = 0.04 ... 0.10),
    then the pixels are clipped to [0, 1] as a stored noisy image would be. Draws from ``gen``."""
    n = x.shape[0]
    sigma = torch.rand(n, generator=gen, dtype=torch.float64).to(x.dtype) * max_sigma
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return (x + sigma.view(n, *([1] * (x.dim() - 1))) * noise).clamp(0.0, 1.0)


def augment_batch(x: Tensor, kind: str, pad: int, gen: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    if kind in ("crop", "crop_flip"):
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * pad)
        x = padded.gather(2, rows)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
        x = x.gather(3, cols)
    elif kind == "imagenet":
        x = _random_resized_crop(x, gen)
    if kind in ("crop_flip", "imagenet"):
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    return x


def _random_resized_crop(x: Tensor, gen: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> Tensor:
    """torchvision's RandomResizedCrop on a batch (one box per image, bilinear back to the size)."""
    n, _, h, w = x.shape
    area = h * w
    out = torch.empty_like(x)
    log_r = torch.log(torch.tensor(ratio))
    for i in range(n):
        box = (0, 0, h, w)
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*scale, generator=gen))
            aspect = float(torch.exp(torch.empty(1).uniform_(float(log_r[0]), float(log_r[1]), generator=gen)))
            cw = int(round((target * aspect) ** 0.5))
            ch = int(round((target / aspect) ** 0.5))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
                box = (top, left, ch, cw)
                break
        top, left, ch, cw = box
        crop = x[i : i + 1, :, top : top + ch, left : left + cw]
        out[i] = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
    return out


def normalize(x: Tensor, mean, std) -> Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def split_holdout(images: Tensor, labels: Tensor, fraction: float, seed: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded held-out split of the training data (for selecting a checkpoint without looking
    at the test set): ``(train_x, train_y, val_x, val_y)``."""
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed + 17))
    n_val = max(1, int(round(fraction * images.shape[0])))
    val, train = order[:n_val], order[n_val:]
    return images[train], labels[train], images[val], labels[val]


def default_augment(dataset: str) -> str:
    return {"cifar10": "crop_flip", "cifar100": "crop_flip", "digits": "crop", "imagenet": "imagenet"}.get(
        dataset, "none"
    )


def default_pad(dataset: str, image_size: Optional[int]) -> int:
    return 2 if dataset == "digits" else 4
