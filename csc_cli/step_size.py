"""A CSC layer's step size: ``t = step_scale / L`` with ``L = ||A||^2`` at the input size in use.

``L`` depends on the dictionary *and* on the input size (and, for a transposed layer, on the output
padding: both set the operator), so one number cannot serve every size: too small a step wastes the
K unrolled steps, too large a one makes FISTA diverge. :class:`StepSizeState` is the one owner of
that bookkeeping for one layer, used by the layer's forward, by training and its resume, and by
the ONNX exporter:

* **the stored estimate** -- ``L`` at one size, kept in the layer's ``lipschitz`` /
  ``lipschitz_size`` buffers so that it is saved, loaded and moved with the model. Training forwards
  refresh it by one warm-started power iteration (cold and converged when the size changes or the
  atoms moved a lot); eval forwards at that size read it as it is.
* **the warm start** -- the power vector of the last refresh and the atoms it was computed for
  (non-persistent buffers of the layer); :meth:`warm_state` / :meth:`load_warm_state` carry it over
  a resumed run so that the next refresh is bit-for-bit the one an uninterrupted run makes.
* **per-size estimates** -- an eval forward at another size gets its own deterministic, converged
  estimate, memoised here (never written to the layer's state), so the step is right at every size
  and a loaded model uses the right step on its first forward.

:meth:`pin` makes the estimate an eval forward uses at a size the stored one: the exporter calls it
on a copy of the model, so that the traced graph reads the step as a constant.

The tensors live in the layer's buffers (``state_dict``, ``.to()``, ``deepcopy`` and DDP see them
there); this object holds the logic and the Python-side mirror of the stored size, so that an eval
forward compares sizes without a device sync.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .core.operators import Geometry, power_iteration

__all__ = ["StepSizeState"]

_EVAL_CACHE_SIZE = 16
_WARM_MAX_ITERS = 50
_MIN_LIPSCHITZ = 1e-12


class StepSizeState:
    """The step-size state of one CSC layer (``layer.step_state``); see the module docstring.

    ``layer`` is the owning :class:`~csc_cli.layers.CSCConvNd`: its ``lipschitz``, ``lipschitz_size``,
    ``_power_vec`` and ``_power_atoms`` buffers hold the tensors, its ``_operator`` /
    ``_size_record`` / ``_parse_size_record`` say which operator a size uses and how the size is
    recorded, and its ``step_scale``, ``power_iters``, ``power_tol`` and ``power_restart`` options
    are read at each use (so changing them on the layer takes effect)."""

    def __init__(self, layer: Any) -> None:  # duck-typed: csc_cli.layers imports this module
        self._layer = layer
        self._size: Optional[Tuple[int, ...]] = None
        self._geometry: Optional[Geometry] = None
        self._eval_cache: "OrderedDict[tuple, Tensor]" = OrderedDict()

    # ------------------------------------------------------------------ queries
    @property
    def size(self) -> Optional[Tuple[int, ...]]:
        """The input size of the stored estimate (None before the first one)."""
        return self._size

    def step_from(self, lip: Tensor) -> Tensor:
        """``t = step_scale / L``. An all-zero dictionary (a zero-initialised conv) has ``L = 0``:
        any step is exact there, and a finite one keeps ``0 * step`` from turning into NaN."""
        return self._layer.step_scale / lip.clamp_min(_MIN_LIPSCHITZ)

    def stored(self) -> Tensor:
        """The step at the stored size."""
        if self._size is None:
            raise RuntimeError("no step size estimated yet: run a training forward or call refresh_step_size(size)")
        return self.step_from(self._layer.lipschitz)

    def at(self, size: Sequence[int], output_size: Optional[Sequence[int]] = None) -> Tensor:
        """The step an eval forward on an input of spatial ``size`` (producing ``output_size``, for
        a transposed layer) uses (pure: the stored estimate, or a memoised one for that size)."""
        layer = self._layer
        size = tuple(int(s) for s in size)
        return self.step_from(self.lipschitz(size, layer._operator(size, output_size), layer.atoms, refresh=False))

    def lipschitz(self, size: Tuple[int, ...], geometry: Geometry, atoms: Tensor, refresh: bool) -> Tensor:
        """``L`` for a forward at ``size`` with ``geometry``: refreshed and stored when ``refresh``
        (training), otherwise the stored estimate at its size and a memoised converged one at any
        other."""
        layer = self._layer
        if refresh:
            with torch.no_grad():
                if self._can_warm_start(size, geometry, atoms):
                    # warm, one vector (the first of a cold block is its power-iteration vector):
                    # at least power_iters iterations, more while the estimate still moves
                    lip, vec, _ = power_iteration(
                        geometry, atoms, size, v0=layer._power_vec[:1], previous=layer.lipschitz, block=1,
                        iters=_WARM_MAX_ITERS, min_iters=layer.power_iters, tol=layer.power_tol,
                    )
                else:  # first batch, new size, or a large update: cold and converged
                    lip, vec, _ = power_iteration(geometry, atoms, size)
                self._store(lip, vec, size, geometry, atoms)
            # a copy: the buffer will change in place on the next training forward
            return layer.lipschitz.clone()
        if self._is_stored(size, geometry):
            return layer.lipschitz
        return self._estimate(size, geometry, atoms)

    def _estimate(self, size: Tuple[int, ...], geometry: Geometry, atoms: Tensor) -> Tensor:
        """The deterministic, converged eval estimate at ``size`` (memoised per weights and size)."""
        weight = self._layer.weight
        key = (size, geometry, atoms.device, atoms.dtype, weight._version, weight.data_ptr())
        lip = self._eval_cache.get(key)
        if lip is None:
            lip, _, _ = power_iteration(geometry, atoms, size)
            lip = lip.to(self._layer.lipschitz.dtype)
            self._eval_cache[key] = lip
            while len(self._eval_cache) > _EVAL_CACHE_SIZE:
                self._eval_cache.popitem(last=False)
        return lip

    # ------------------------------------------------------------------ changes
    @torch.no_grad()
    def refresh(self, size: Optional[Sequence[int]] = None, *, output_size: Optional[Sequence[int]] = None,
                iters: int = 200) -> Tensor:
        """Re-estimate and store ``L`` at ``size`` (default: the stored size) to convergence,
        warm-started from the training power vector when there is one. Returns the new step."""
        layer = self._layer
        if size is None:
            if self._size is None:
                raise ValueError("give the input size: this layer has no stored step size yet")
            size = self._size
            geometry = self._geometry if output_size is None else layer._operator(size, output_size)
        else:
            size = tuple(int(s) for s in size)
            geometry = layer._operator(size, output_size)
        geometry.output_size(size)  # validates the size
        warm = layer._power_vec if (self._size, self._geometry) == (size, geometry) else None
        atoms = layer.atoms
        lip, vec, _ = power_iteration(geometry, atoms, size, v0=warm, iters=iters)
        self._store(lip, vec, size, geometry, atoms)
        return self.stored()

    @torch.no_grad()
    def pin(self, size: Sequence[int], output_size: Optional[Sequence[int]] = None) -> Tensor:
        """Make the estimate an eval forward at ``size`` uses the stored one (no change at the
        stored size), so that a traced eval forward reads the step from a buffer: a constant of
        the graph, the same number ``csc eval`` uses at that size. Returns the step. The exporter
        calls it on a copy of the model (it replaces the stored training estimate and warm start)."""
        layer = self._layer
        size = tuple(int(s) for s in size)
        geometry = layer._operator(size, output_size)
        geometry.output_size(size)
        if not self._is_stored(size, geometry):
            atoms = layer.atoms
            lip = self._estimate(size, geometry, atoms)
            layer.lipschitz.copy_(lip)
            layer.lipschitz_size.copy_(torch.tensor(layer._size_record(size, geometry)))
            layer._power_vec = None
            layer._power_atoms = None
            self._size, self._geometry = size, geometry
            self._eval_cache.clear()
        return self.stored()

    def forget(self) -> None:
        """No stored estimate and no warm start (new weights): the next forward estimates afresh."""
        layer = self._layer
        layer.lipschitz.zero_()
        layer.lipschitz_size.zero_()
        layer._power_vec = None
        layer._power_atoms = None
        self._size = None
        self._geometry = None
        self._eval_cache.clear()

    def _store(self, lip: Tensor, vec: Tensor, size: Tuple[int, ...], geometry: Geometry, atoms: Tensor) -> None:
        layer = self._layer
        layer.lipschitz.copy_(lip)
        layer.lipschitz_size.copy_(torch.tensor(layer._size_record(size, geometry)))
        layer._power_vec = vec
        layer._power_atoms = atoms.detach().clone()
        self._size = size
        self._geometry = geometry
        self._eval_cache.clear()

    def _is_stored(self, size: Tuple[int, ...], geometry: Geometry) -> bool:
        return self._size == size and (geometry is self._geometry or geometry == self._geometry)

    def _can_warm_start(self, size: Tuple[int, ...], geometry: Geometry, atoms: Tensor) -> bool:
        """Warm-start unless the size (or operator) changed or the atoms moved more than
        ``power_restart`` (relative) since the last estimate: after a large update the new top
        eigen-direction can be one the warm block barely contains, and a lagging estimate is an
        unsafe step."""
        layer = self._layer
        if not self._is_stored(size, geometry) or layer._power_vec is None or layer._power_atoms is None:
            return False
        if layer.power_tol == 0:  # fixed-cost, sync-free refresh was asked for
            return True
        moved = (atoms.detach() - layer._power_atoms).norm() / layer._power_atoms.norm()
        return bool(moved <= layer.power_restart)

    # ------------------------------------------------------------------ resume and loading
    def warm_state(self) -> Optional[Dict[str, Tensor]]:
        """``{'vector', 'atoms', 'size'}`` (``size`` as ``lipschitz_size`` records it) -- what a resumed
        run needs to take exactly the next refresh it would have taken; None when there is none."""
        layer = self._layer
        if layer._power_vec is None or layer._power_atoms is None or not self._size:
            return None
        return {"vector": layer._power_vec, "atoms": layer._power_atoms,
                "size": torch.tensor(layer._size_record(self._size, self._geometry), dtype=torch.long)}

    def load_warm_state(self, state: Dict[str, Tensor]) -> None:
        """Restore what :meth:`warm_state` returned (after the model's state dict is loaded)."""
        layer = self._layer
        record = state["size"].tolist()
        parsed = layer._parse_size_record(record)
        if parsed is None:
            raise ValueError(f"warm state for a {layer._dim}-d layer has size {record}")
        layer._power_vec = state["vector"].to(layer.lipschitz.device)
        layer._power_atoms = state["atoms"].to(layer.lipschitz.device)
        self._size, self._geometry = parsed
        self._eval_cache.clear()

    def loaded(self, has_estimate: bool) -> None:
        """Sync with a state dict just loaded into the layer's buffers. One without a step size (e.g.
        plain conv weights loaded with strict=False) leaves none, so the first forward estimates it
        for the loaded weights instead of using a stale value."""
        layer = self._layer
        self._eval_cache.clear()
        layer._power_vec = None
        layer._power_atoms = None
        if not has_estimate:
            self.forget()
            return
        parsed: Any = layer._parse_size_record(layer.lipschitz_size.tolist())
        if parsed is None or not float(layer.lipschitz) > 0:
            parsed = (None, None)
        self._size, self._geometry = parsed
