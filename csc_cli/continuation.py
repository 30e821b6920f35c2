"""The continuation path from a trained conv to a CSC layer: start at the conv, end at the CSC layer.

A ConvNet converted by :func:`csc_cli.convert` (conv units) at SDNet settings -- K = 2 steps, lambda
0.1, non-negative codes -- loses most of what it knew at once: the threshold, the lost negative half
and the second (explaining-away) step each change the function, and through 21 layers they compound
to a network that predicts one class. The path instead moves every CSC layer there during
fine-tuning, continuously, from the exact original function. At path position ``p`` in [0, 1]
each layer solves with a :class:`~csc_cli.core.Relaxation`:

* ``lam_scale`` -- lambda ramped from 0 (no threshold: the conv) to the layer's lambda;
* ``leak`` -- the non-negativity phased in: a non-negative layer keeps ``leak`` of its code's
  negative part (``1``: the signed code, which is the conv; ``0``: the non-negative code);
* ``tail`` -- the steps after the first phased in: the output is ``z_1 + tail (z_K - z_1)``
  (``0``: one step, the conv; ``1``: the K-step code).

At ``p = 0`` (lambda 0, signed, one step, conv units) every layer *is* the conv it replaced, so
the network starts exactly at the source; at ``p = 1`` nothing is relaxed and :func:`finish`
removes the path, leaving plain CSC layers at their own settings. Each factor ramps over its own
window of the path (``lam=(0, 1)`` by default), linearly or along a half cosine.

The path is part of the model while it is on it: a model file saved mid-path carries it in its
card (``continuation``: the windows, the path's length in optimizer steps and the step it is at), and
:func:`csc_cli.load` puts it back, so a saved, loaded or resumed model computes exactly what it did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch.nn as nn

from .core.lasso import Relaxation
from .layers import csc_layers

__all__ = ["ContinuationPath", "attach", "finish", "current", "PATH_ATTRIBUTE", "SHAPES"]

SHAPES = ("linear", "cosine")
#: The model attribute that holds the path and the step it is at while the model is on it.
PATH_ATTRIBUTE = "csc_continuation"

Window = Tuple[float, float]


def _window(value: Any, name: str) -> Window:
    try:
        start, end = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"continuation window {name} must be two numbers [start, end], got {value!r}") from None
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"continuation window {name} must satisfy 0 <= start <= end <= 1, got {[start, end]}")
    return start, end


@dataclass(frozen=True)
class ContinuationPath:
    """A path of ``steps`` optimizer steps from the conv to the CSC layer (see the module docstring).

    ``lam``, ``nonneg`` and ``tail`` are the windows (fractions of the path) over which each factor
    ramps from its conv value to its CSC value; ``shape`` is the ramp's shape inside a window."""

    steps: int
    lam: Window = (0.0, 1.0)
    nonneg: Window = (0.0, 1.0)
    tail: Window = (0.0, 1.0)
    shape: str = "linear"

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"a continuation path takes at least one step, got steps={self.steps!r}")
        for name in ("lam", "nonneg", "tail"):
            object.__setattr__(self, name, _window(getattr(self, name), name))
        if self.shape not in SHAPES:
            raise ValueError(f"continuation shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")

    def _ramp(self, progress: float, window: Window) -> float:
        start, end = window
        if progress >= end:
            return 1.0
        if progress <= start:
            return 0.0
        f = (progress - start) / (end - start)
        return f if self.shape == "linear" else 0.5 * (1.0 - math.cos(math.pi * f))

    def relaxation(self, step: int) -> Relaxation:
        """Where every layer is after ``step`` optimizer steps (``Relaxation()`` from ``steps`` on)."""
        p = min(max(step, 0) / self.steps, 1.0)
        return Relaxation(lam_scale=self._ramp(p, self.lam), leak=1.0 - self._ramp(p, self.nonneg),
                          tail=self._ramp(p, self.tail))

    def done(self, step: int) -> bool:
        return step >= self.steps

    # ------------------------------------------------------------------ records (model cards)
    def record(self, step: int) -> Dict[str, Any]:
        return {"steps": self.steps, "step": int(step), "lam": list(self.lam), "nonneg": list(self.nonneg),
                "tail": list(self.tail), "shape": self.shape}

    @classmethod
    def parse(cls, record: Any) -> Tuple["ContinuationPath", int]:
        """The path and the step a card's ``continuation`` record describes (ValueError if invalid)."""
        if not isinstance(record, dict) or set(record) != {"steps", "step", "lam", "nonneg", "tail", "shape"}:
            raise ValueError("'continuation' must be an object with steps, step, lam, nonneg, tail, shape")
        step = record["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"continuation step must be an integer >= 0, got {step!r}")
        path = cls(steps=record["steps"], lam=record["lam"], nonneg=record["nonneg"], tail=record["tail"],
                   shape=record["shape"])
        if path.done(step):
            raise ValueError(f"continuation step {step} is at or past the path's end ({path.steps}): a finished "
                             "path is not recorded")
        return path, step


def _path_layers(model: nn.Module):
    layers = csc_layers(model)
    if not layers:
        raise ValueError("the continuation path needs CSC layers: convert the model first (csc convert MODEL "
                         "--out FILE), then train it with --init FILE")
    code_units = [n for n, layer in layers.items() if layer.units != "conv"]
    if code_units:
        raise ValueError(f"the continuation path starts at the source conv only for layers in conv units, and "
                         f"{len(code_units)} CSC layer(s) return bare codes ({code_units[0]}, ...): convert with "
                         "units='conv' (csc convert's default)")
    return layers


def attach(model: nn.Module, path: ContinuationPath, step: int) -> Relaxation:
    """Put every CSC layer of ``model`` at ``step`` of ``path`` (or :func:`finish` it when the path
    is done); the model remembers the path for its model file. Returns the relaxation set."""
    layers = _path_layers(model)
    if path.done(step):
        finish(model)
        return Relaxation()
    relax = path.relaxation(step)
    for layer in layers.values():
        layer.relaxation = relax
    object.__setattr__(model, PATH_ATTRIBUTE, (path, int(step)))
    return relax


def finish(model: nn.Module) -> None:
    """End the path: every CSC layer a plain layer at its own settings, nothing of the path left."""
    for layer in csc_layers(model).values():
        layer.relaxation = None
    if PATH_ATTRIBUTE in model.__dict__:
        del model.__dict__[PATH_ATTRIBUTE]


def current(model: nn.Module) -> Optional[Tuple[ContinuationPath, int]]:
    """``(path, step)`` while ``model`` is on a path, else None."""
    return model.__dict__.get(PATH_ATTRIBUTE)
