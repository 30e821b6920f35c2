"""Image folders (ImageNet layout: ``train/<class>/*.jpg``, ``val/<class>/*.jpg``), streamed.

Batches have the same interface as the in-memory :class:`~csc_cli.data.pipeline.Batches`
(``epoch(epoch, start_batch)``, ``len``), images as float tensors in [0, 1]. Every random draw of
the augmentation is seeded by ``(seed, epoch, image index)``, so the batches are the same with any
number of loader workers and after resuming mid-epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .pipeline import add_noise, check_noise

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_split(root: Path, split: str) -> Path:
    names = ["train"] if split == "train" else ["val", "validation", "test"]
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no {' or '.join(names)}/ folder under {root} (ImageFolder layout: "
                            f"{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg)")


def transforms_for(training: bool, image_size: int, augment: str):
    from torchvision import transforms as T

    if training and augment == "imagenet":
        return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor()])
    if training and augment in ("crop_flip", "crop"):
        steps = [T.Resize(image_size), T.RandomCrop(image_size, padding=image_size // 8)]
        if augment == "crop_flip":
            steps.append(T.RandomHorizontalFlip())
        return T.Compose(steps + [T.ToTensor()])
    resize = int(round(image_size / 0.875))  # 256 for 224, as in the ImageNet evaluation protocol
    return T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor()])


class _SeededFolder(Dataset):
    """ImageFolder whose transform draws its randomness from a generator seeded per image."""

    def __init__(self, root: Path, transform, seed: int):
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(str(root))
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        image, label = self.folder[index]
        state = torch.get_rng_state()
        torch.manual_seed((self.seed * 100003 + self.epoch) * 1_000_003 + index)
        try:
            return self.transform(image), label
        finally:
            torch.set_rng_state(state)  # the caller's random stream is left as it was


class _Indices(Sampler):
    def __init__(self, indices: Tensor):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class FolderBatches:
    root: Path
    split: str  # the folder: 'train' or 'val'
    batch_size: int
    training: bool = False  # augmenting transform (else the evaluation resize + centre crop)
    subset: Optional[Tensor] = None  # only these image indices (a held-out split)
    image_size: int = 224
    augment: str = "none"
    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    workers: int = 2
    noise: float = 0.0  # gaussian noise augmentation's largest sigma (csc_cli.data.pipeline.add_noise)

    def __post_init__(self) -> None:
        check_noise(self.noise)
        self.dataset = _SeededFolder(find_split(Path(self.root), self.split),
                                     transforms_for(self.training, self.image_size, self.augment), self.seed)
        if len(self.dataset) == 0:
            raise FileNotFoundError(f"no images under {self.root}/{self.split}")

    @property
    def class_names(self) -> List[str]:
        return list(self.dataset.folder.classes)

    def _indices(self, epoch: int) -> Tensor:
        pool = self.subset if self.subset is not None else torch.arange(len(self.dataset))
        n = pool.shape[0]
        order = (pool[torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))]
                 if self.shuffle else pool)
        if self.world_size > 1:
            per_rank = -(-n // self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - n]])[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = self._indices(0).shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Tuple[Tensor, Tensor]]:
        self.dataset.epoch = epoch
        order = self._indices(epoch)[start_batch * self.batch_size : len(self) * self.batch_size]
        # a generator of its own: the loader's base seed must not come from (and advance) the
        # global random stream
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=_Indices(order),
                            num_workers=self.workers, drop_last=self.drop_last, persistent_workers=False,
                            generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        for b, (x, y) in enumerate(loader, start=start_batch):
            if self.noise:  # seeded by (seed, epoch, batch), as the in-memory batches' draws
                x = add_noise(x, self.noise, torch.Generator().manual_seed((self.seed * 100003 + epoch) * 7919 + b))
            yield x, y

    def head(self, n: int) -> Tensor:
        """The first ``n`` images of the split (eval transform), for probes."""
        return torch.stack([self.dataset[i][0] for i in range(min(n, len(self.dataset)))])
