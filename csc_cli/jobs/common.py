"""Pieces every job shares: the device, predictions and accuracy, evaluation data, lambda grids.

* :func:`predict` -- logits of a model that normalises its own input, on raw [0, 1] images;
* :func:`accuracy` -- top-1 and mean cross-entropy as a :class:`Tally` of counts, summed over the
  processes of a ``torchrun`` job when given its :class:`~csc_cli.distributed.DistributedContext`;
* :func:`evaluation_data` -- the dataset given, or the one the model file names, and a seeded
  subset of it (eval, attack and inspect draw the same examples for the same seed);
* :func:`over_lambdas` / :func:`accuracy_over_lambdas` -- a measurement at every lambda of a grid
  on one CSC layer (eval's calibration and sweep, attack's robust accuracy vs lambda).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..data.source import Split, open_for_model
from ..robust.lam import lambda_override

T = TypeVar("T")
Batches = Union[Tensor, Tuple[Tensor, Tensor], Iterable[Tuple[Tensor, Any]]]


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when there is one, else the CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    """Autocast for 'bf16' / 'fp16'; a no-op for 'none'."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _batched(data: Batches, batch_size: int) -> Iterable[Tuple[Tensor, Any]]:
    """``(images, labels)`` batches of a tensor, a pair of tensors, or an iterable of batches."""
    if isinstance(data, Tensor):
        return ((data[i : i + batch_size], None) for i in range(0, data.shape[0], batch_size))
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
        return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size))
    return data


def _to_model(x: Tensor, device, channels_last: bool) -> Tensor:
    x = x.to(device)  # raw [0, 1]: the model normalises its own input
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def predict(model: nn.Module, images: Batches, device, batch_size: int = 256, amp: str = "none",
            channels_last: bool = False) -> Tensor:
    """Logits (float32, CPU) of ``model`` (as it is: call ``.eval()`` first; it normalises its own
    input) on raw [0, 1] ``images``: a tensor, or an iterable of ``(images, labels)`` batches (a
    streamed split)."""
    outs = []
    for x, _ in _batched(images, batch_size):
        with autocast(device, amp):
            outs.append(model(_to_model(x, device, channels_last)).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


@dataclass
class Tally:
    """Counts behind an accuracy and a mean loss; sums exactly across batches and processes."""

    correct: int = 0
    loss_sum: float = 0.0
    seen: int = 0

    def add(self, logits: Tensor, labels: Tensor, loss_sum: Optional[float] = None) -> None:
        """Count a batch; ``loss_sum`` is its summed loss (default: the cross-entropy of ``logits``)."""
        labels = labels.to(logits.device)
        if loss_sum is None:
            loss_sum = float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        self.loss_sum += loss_sum
        self.correct += int((logits.argmax(1) == labels).sum())
        self.seen += labels.numel()

    def reduced(self, dist=None) -> "Tally":
        """The tally summed over every process of ``dist`` (itself when not distributed)."""
        if dist is None or not getattr(dist, "active", False):
            return Tally(self.correct, self.loss_sum, self.seen)
        loss_sum, correct, seen = dist.sum([self.loss_sum, self.correct, self.seen])
        return Tally(int(round(correct)), loss_sum, int(round(seen)))

    @property
    def acc(self) -> float:
        return self.correct / max(self.seen, 1)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    def as_dict(self) -> Dict[str, float]:
        return {"acc": self.acc, "loss": self.loss, "n": self.seen}


@torch.no_grad()
def accuracy(model: nn.Module, data: Batches, device, *, batch_size: int = 256, amp: str = "none",
             channels_last: bool = False, dist=None) -> Tally:
    """Top-1 accuracy and mean cross-entropy of ``model`` in eval mode (its mode is restored) on
    ``data``: a pair ``(images, labels)`` or an iterable of labelled batches. With ``dist`` (a
    :class:`~csc_cli.distributed.DistributedContext`) each process counts its own shard and the
    counts are summed over all of them."""
    was_training = model.training
    model.eval()
    tally = Tally()
    try:
        for x, y in _batched(data, batch_size):
            with autocast(device, amp):
                logits = model(_to_model(x, device, channels_last))
            tally.add(logits, y.to(device))
    finally:
        model.train(was_training)
    return tally.reduced(dist)


# ----------------------------------------------------------------------------- evaluation data
@dataclass
class EvalSample:
    """A seeded subset of a split (``indices`` None: all of it), read only when asked."""

    split: Split
    indices: Optional[Tensor]

    def __len__(self) -> int:
        return len(self.split) if self.indices is None else int(self.indices.numel())

    def labels(self) -> Tensor:
        return self.split.labels(self.indices)

    def take(self) -> Tuple[Tensor, Tensor]:
        """The images and labels, in memory."""
        return self.split.take(self.indices if self.indices is not None else torch.arange(len(self.split)))

    def batches(self, batch_size: int):
        """Streamed ``(images, labels)`` batches (never the whole split in memory)."""
        return self.split.batches(batch_size, self.indices)


def evaluation_data(card, dataset: Optional[str], data_dir: Optional[str], n: Optional[int], seed: int,
                    split: str = "test") -> EvalSample:
    """``dataset`` (default: the one ``card`` names) read the way the model expects, and a seeded
    random subset of ``n`` examples in index order (``n`` None or at least the split: all of it)."""
    data = open_for_model(card, split, dataset, data_dir)
    return EvalSample(data, data.sample(n, seed))


# ----------------------------------------------------------------------------- lambda grids
def over_lambdas(model: nn.Module, layer: str, grid: Sequence[float], measure: Callable[[float], T]) -> List[T]:
    """``measure(lam)`` for every ``lam`` of ``grid``, with CSC layer ``layer``'s lambda set to it
    (restored afterwards)."""
    results = []
    for lam in grid:
        with lambda_override(model, {layer: lam}):
            results.append(measure(lam))
    return results


def accuracy_over_lambdas(model: nn.Module, layer: str, grid: Sequence[float], images: Tensor, labels: Tensor,
                          device, batch_size: int = 256, amp: str = "none") -> List[float]:
    """Top-1 accuracy on ``(images, labels)`` at every lambda of ``grid`` on ``layer``."""
    return over_lambdas(model, layer, grid,
                        lambda lam: accuracy(model, (images, labels), device, batch_size=batch_size, amp=amp).acc)
