"""Progress events: one small dataclass per kind, so a renderer is checked against what a job sends.

A job takes ``progress: Callable[[Event], None]`` and calls it as it advances; a renderer matches on
the event's type. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional


@dataclass(frozen=True)
class Event:
    """Base class of every progress event."""


@dataclass(frozen=True)
class Step(Event):
    """A stage of a job advanced: ``done`` of ``total`` units (``total`` 0: unknown)."""

    stage: str
    done: int
    total: int
    detail: str = ""


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainStart(Event):
    arch: str
    parameters: int
    device: str
    epochs: int
    steps_per_epoch: int
    start_epoch: int
    train_images: int
    notes: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class EpochStart(Event):
    epoch: int  # 0-based
    batches: int
    first_batch: int


@dataclass(frozen=True)
class BatchEnd(Event):
    epoch: int  # 0-based
    batch: int  # 1-based: batches done in this epoch
    batches: int
    loss: float  # running mean over the epoch so far (this process)
    acc: float
    images_per_s: float


@dataclass(frozen=True)
class EpochEnd(Event):
    epoch: int  # 1-based, as in metrics.jsonl
    lr: float
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    images_per_s: float
    seconds: float
    val_loss: Optional[float] = None
    val_acc: Optional[float] = None
    csc_layers: Dict[str, Dict[str, float]] = field(default_factory=dict)
    train_from_batch: Optional[int] = None  # resumed mid-epoch: the training terms cover this batch on

    @classmethod
    def from_row(cls, row: Dict[str, Any]) -> "EpochEnd":
        return cls(**row)


@dataclass(frozen=True)
class GameEpochEnd(Event):
    """An epoch of the CTRL rate-reduction game (autoencoders): training means of the game's terms
    (from the decoder steps), reconstruction MSE in [0, 1] pixel units, and the test split's
    reconstruction MSE / PSNR and the rate reduction of its features."""

    epoch: int  # 1-based
    lr: float
    T: float
    dR_Z: Optional[float]  # None in binary mode (no labels: T is dR(Z, Zh))
    dR_Zh: Optional[float]
    pairwise: float
    R_Z: float
    train_mse: float
    test_mse: float
    test_psnr: float
    test_R: float
    test_Rc: float
    test_dR: float
    images_per_s: float
    seconds: float
    pixel: float = float("nan")  # per-image pixel / feature consistency terms (logged at any weight)
    feature: float = float("nan")
    val_psnr: Optional[float] = None  # on the held-out training images (--val-split), when there are some
    csc_layers: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Dict[str, Any]) -> "GameEpochEnd":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})


@dataclass(frozen=True)
class TrainDone(Event):
    seconds: float


ProgressFn = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default progress callback: nothing."""


# ----------------------------------------------------------------------------- attack
@dataclass(frozen=True)
class AttackCost(Event):
    """What an attack run will cost, announced before it starts: model passes per example summed
    over the whole run, and the time they take at the measured speed of one pass on this device."""

    gradient_passes: int  # forward + backward through the model, summed over examples
    forward_passes: int
    seconds: float
    device: str
    preset: Optional[str] = None
