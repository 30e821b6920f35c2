"""``CSCConv1d`` / ``CSCConv2d``: drop-in replacements for ``nn.Conv1d`` / ``nn.Conv2d``, and
``CSCConvTranspose1d`` / ``CSCConvTranspose2d`` (sparse deconvolution) for ``nn.ConvTranspose1d`` / ``2d``.

A CSC layer returns the sparse code of its input under a convolutional dictionary whose atoms are
the (unit-normalised) conv filters, computed by ``steps`` unrolled proximal-gradient steps of the
convolutional Lasso. With ``steps=1`` it *is* a conv with a fixed negative bias and a ReLU.

The layer is thin: the math lives in :mod:`csc_cli.core`. What it owns is state:

* ``weight`` -- the dictionary, shaped like the conv weight it replaces (same parameter count);
* ``lam`` -- a buffer (saved with the model); ``layer.lam = 0.3`` changes it in place;
* ``lipschitz`` / ``lipschitz_size`` -- ``L = ||A||^2`` and the input size it was estimated at (for a
  transposed layer, ``lipschitz_size`` is ``[input size, output padding]``: both set the operator).
  Training forwards refresh it by one warm-started power iteration (cold and converged when the
  size changes); eval forwards only read it. An eval input of another size gets its own
  deterministic, converged estimate (memoised, never written to the state), so the step is right
  at every size and a loaded model uses the right step on its first forward. That bookkeeping is
  ``layer.step_state``, a :class:`~csc_cli.step_size.StepSizeState` (training, resume and the ONNX
  exporter use it too); ``step_size``, ``step_size_for``, ``refresh_step_size``, ``trained_size``
  and ``warm_state`` are its short names on the layer.

``units`` says what ``forward`` returns: ``'code'`` (default) the sparse code itself, as SDNet's
layers do; ``'conv'`` the code times ``||atom_m|| / t`` per channel -- in the units of the conv it
replaces, so that one signed step at ``lam = 0`` *is* that conv, and one non-negative step is
``relu(conv(x, W) - lam ||W_m||)``. :func:`csc_cli.convert` uses it for function-preserving warm
starts; :meth:`CSCConvNd.code_from_output` turns a forward output back into the code.

Also here, because ``from_conv`` is it: what counts as a convolution (:func:`conv_kind`), the weight
a conv applies (:func:`applied_weight`) and the one conv -> CSC constructor (:func:`csc_layer_for`),
which :func:`csc_cli.convert` and the model files' edits (:mod:`csc_cli.surgery`) use too.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .core.lasso import BACKWARDS, METHODS, Relaxation, SolverTrace, solve_lasso
from .core.operators import ConvGeometry, Geometry, TransposedConvGeometry
from .step_size import StepSizeState

__all__ = ["CSCConv1d", "CSCConv2d", "CSCConvNd", "CSCConvTranspose1d", "CSCConvTranspose2d", "CSCConvTransposeNd",
           "CSC_OPTION_DEFAULTS", "LAYER_CLASSES", "csc_class_for", "csc_layers", "conv_kind", "convertible",
           "applied_weight", "conv_geometry", "csc_layer_for"]

#: The keyword-only CSC options every layer takes, with their defaults.
CSC_OPTION_DEFAULTS: Dict[str, Any] = {
    "lam": 0.1,
    "steps": 2,
    "nonneg": True,
    "mu": 0.0,
    "method": "fista",
    "backward": "unrolled",
    "step_scale": 0.9,
    "power_iters": 1,
    "power_tol": 1e-3,
    "power_restart": 0.05,
    "cg_iters": 100,
    "cg_tol": 1e-6,
    "units": "code",
}

#: What a CSC layer's forward returns: the sparse code itself, or the code in the units of the conv
#: it replaces (times ``||atom_m|| / t`` per channel: with one signed step at lam 0 it *is* the conv).
UNITS = ("code", "conv")


def _check_lam(value: Union[float, Tensor]) -> float:
    try:
        lam = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a non-negative number, got {value!r}") from None
    if not lam >= 0 or math.isinf(lam):
        raise ValueError(f"lam must be a finite number >= 0, got {value!r}")
    return lam


class CSCConvNd(nn.Module):
    """The base of every CSC layer -- :class:`CSCConv1d`, :class:`CSCConv2d` and the transposed
    :class:`CSCConvTranspose1d`, :class:`CSCConvTranspose2d` (``isinstance`` tests name this one)."""

    _dim: int = 0
    _conv_name: str = ""  # the torch.nn class this one replaces
    transposed: bool = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        lam: float = 0.1,
        steps: int = 2,
        nonneg: bool = True,
        mu: float = 0.0,
        method: str = "fista",
        backward: str = "unrolled",
        step_scale: float = 0.9,
        power_iters: int = 1,
        power_tol: float = 1e-3,
        power_restart: float = 0.05,
        cg_iters: int = 100,
        cg_tol: float = 1e-6,
        units: str = "code",
    ) -> None:
        super().__init__()
        geometry = ConvGeometry.create(
            self._dim, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode
        )
        self._setup(geometry, bias, device, dtype, lam=lam, steps=steps, nonneg=nonneg, mu=mu, method=method,
                    backward=backward, step_scale=step_scale, power_iters=power_iters, power_tol=power_tol,
                    power_restart=power_restart, cg_iters=cg_iters, cg_tol=cg_tol, units=units)
        # nn.Conv-compatible attributes, for code that inspects convs
        self.padding = padding if isinstance(padding, str) else tuple(b for b, _ in geometry.padding)
        self.padding_mode = padding_mode

    def _setup(self, geometry: Geometry, bias: bool, device, dtype, *, lam, steps, nonneg, mu, method, backward,
               step_scale, power_iters, power_tol, power_restart, cg_iters, cg_tol, units="code") -> None:
        """What every CSC layer holds, for a validated geometry: options, weight, bias, lam, step state."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if not mu >= 0:
            raise ValueError(f"mu must be >= 0, got {mu!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, got {backward!r}")
        if not 0 < step_scale <= 1:
            raise ValueError(f"step_scale must be in (0, 1] (t * L <= 1 keeps FISTA stable), got {step_scale!r}")
        if isinstance(power_iters, bool) or not isinstance(power_iters, int) or power_iters < 1:
            raise ValueError(f"power_iters must be an int >= 1, got {power_iters!r}")
        if not power_tol >= 0:
            raise ValueError(f"power_tol must be >= 0, got {power_tol!r}")
        if not power_restart > 0:
            raise ValueError(f"power_restart must be > 0, got {power_restart!r}")
        if units not in UNITS:
            raise ValueError(f"units must be one of {', '.join(UNITS)}, got {units!r}")
        if cg_iters < 1 or not cg_tol > 0:
            raise ValueError(f"cg_iters must be >= 1 and cg_tol > 0, got {cg_iters!r}, {cg_tol!r}")
        factory = {"device": device, "dtype": dtype}
        self.geometry = geometry
        self.steps = steps
        self.nonneg = bool(nonneg)
        self.mu = float(mu)
        self.method = method
        self.backward = backward
        self.step_scale = float(step_scale)
        self.power_iters = power_iters
        self.power_tol = float(power_tol)
        self.power_restart = float(power_restart)
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)
        self.units = units
        # attack-time only (csc attack's gradient modes): softplus temperature of the threshold's
        # backward; 0 = the exact gradient. Not a model option, never saved.
        self.surrogate = 0.0
        self.implicit_damping = 0.0
        # a point on the continuation path from the conv this layer replaced (csc_cli.continuation);
        # None is the plain layer. Not a model option and not in the state dict: a model file
        # carries the path in its card, and a loaded model gets it back from there.
        self.relaxation: Optional[Relaxation] = None
        self.in_channels, self.out_channels, self.groups = geometry.in_channels, geometry.out_channels, geometry.groups
        self.kernel_size, self.stride, self.dilation = geometry.kernel_size, geometry.stride, geometry.dilation

        self.weight = nn.Parameter(torch.empty(geometry.weight_shape, **factory))
        self.bias = nn.Parameter(torch.empty(geometry.out_channels, **factory)) if bias else None
        self.register_buffer("lam", torch.tensor(_check_lam(lam), **factory))
        self.register_buffer("lipschitz", torch.zeros((), **factory))
        self.register_buffer("lipschitz_size", torch.zeros(self._size_record_shape(), dtype=torch.long, device=device))
        # the step size: L at one input size (saved), the warm power block and the atoms it was for
        self.register_buffer("_power_vec", None, persistent=False)
        self.register_buffer("_power_atoms", None, persistent=False)
        # the bookkeeping of those four buffers: stored estimate, warm start, per-size estimates
        self.step_state = StepSizeState(self)
        self.reset_parameters()

    # ------------------------------------------------------------------ construction
    def reset_parameters(self) -> None:
        """nn.Conv's initialisation (the atoms are normalised at use, so only directions matter)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)
        self._forget_step_size()

    @classmethod
    def from_conv(cls, conv: nn.Module, **options: Any) -> "CSCConvNd":
        """A CSC layer with ``conv``'s geometry whose dictionary is ``conv``'s weight (and whose
        bias, if any, is ``conv``'s bias). ``options`` are the CSC keyword options. (The same
        construction :func:`csc_cli.convert` uses: :func:`csc_layer_for`.)"""
        if csc_class_for(conv) is not cls:
            raise ValueError(f"{cls.__name__}.from_conv needs an nn.{cls._conv_name}, got {type(conv).__name__}")
        return csc_layer_for(conv, **options)

    @classmethod
    def from_record(cls, geometry: Dict[str, Any], options: Dict[str, Any], *, device=None,
                    dtype=None) -> "CSCConvNd":
        """The layer a :meth:`geometry_record` and :meth:`csc_options` describe (freshly
        initialised weights). The one constructor model files and conversions use."""
        g = geometry
        padding = g["padding"] if isinstance(g["padding"], str) else tuple(g["padding"])
        return cls(g["in_channels"], g["out_channels"], tuple(g["kernel_size"]), stride=tuple(g["stride"]),
                   padding=padding, dilation=tuple(g["dilation"]), groups=g["groups"], bias=bool(g["bias"]),
                   padding_mode=g["padding_mode"], device=device, dtype=dtype, **options)

    def geometry_record(self) -> Dict[str, Any]:
        """The layer's geometry as plain values (for model cards): :meth:`from_record`'s input."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "bias": self.bias is not None,
            "padding_mode": self.padding_mode,
        }

    def csc_options(self) -> Dict[str, Any]:
        """The CSC keyword options of this layer, as plain values (for model metadata)."""
        return {
            "lam": float(self.lam),
            "steps": self.steps,
            "nonneg": self.nonneg,
            "mu": self.mu,
            "method": self.method,
            "backward": self.backward,
            "step_scale": self.step_scale,
            "power_iters": self.power_iters,
            "power_tol": self.power_tol,
            "power_restart": self.power_restart,
            "cg_iters": self.cg_iters,
            "cg_tol": self.cg_tol,
            "units": self.units,
        }

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "lam" and "lam" in self.__dict__.get("_buffers", {}):
            # Keep lam a buffer (saved with the model, on the module's device) and check it.
            self._buffers["lam"].fill_(_check_lam(value))
            return
        if name == "steps" and "steps" in self.__dict__:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"steps must be an int >= 1, got {value!r}")
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ step size
    @property
    def atoms(self) -> Tensor:
        """The dictionary in use: every atom at unit l2 norm (``weight[m] / ||weight[m]||_2`` for a
        conv; the geometry knows which slices of the weight are the atoms)."""
        return self.geometry.normalize_atoms(self.weight)

    def atom_bank(self, normalized: bool = True) -> Tensor:
        """One atom per code channel, ``(out_channels, in_channels / groups, *kernel)`` -- the
        weight as it is for a conv (unit-norm unless ``normalized=False``); for inspection."""
        return self.atoms if normalized else self.weight

    @property
    def step_size(self) -> Tensor:
        """``t = step_scale / L`` at the stored size (``lipschitz_size``)."""
        return self.step_state.stored()

    # The operator in use depends on the input size and, for transposed layers, on the output size
    # asked for: these hooks say which geometry a call uses and how the stored state records it.
    def _operator(self, size: Tuple[int, ...], output_size: Optional[Sequence[int]] = None) -> Geometry:
        """The geometry a forward on an input of spatial ``size`` uses (``output_size``, if given,
        must be the one it produces)."""
        if output_size is not None and tuple(int(s) for s in output_size) != self.geometry.output_size(size):
            raise ValueError(f"output_size {tuple(output_size)} is not what an input of size {size} gives "
                             f"({self.geometry.output_size(size)})")
        return self.geometry

    def _size_record_shape(self) -> Tuple[int, ...]:
        return (self._dim,)

    def _size_record(self, size: Tuple[int, ...], geometry: Geometry) -> list:
        """What ``lipschitz_size`` holds for an estimate at ``size`` with ``geometry``."""
        return list(size)

    def _parse_size_record(self, record: Any) -> Optional[Tuple[Tuple[int, ...], Geometry]]:
        """``(size, geometry)`` from a ``lipschitz_size`` record; None for no (or a bad) record."""
        try:
            size = tuple(int(s) for s in record)
        except (TypeError, ValueError):
            return None
        if len(size) != self._dim or any(s < 1 for s in size):
            return None
        return size, self.geometry

    def step_size_for(self, size: Sequence[int], output_size: Optional[Sequence[int]] = None) -> Tensor:
        """The step a forward on an input of spatial ``size`` (producing ``output_size``, for a
        transposed layer) uses in the current mode (pure)."""
        return self.step_state.at(size, output_size)

    def refresh_step_size(self, size: Optional[Sequence[int]] = None, *, output_size: Optional[Sequence[int]] = None,
                          iters: int = 200) -> Tensor:
        """Re-estimate and store ``L`` at ``size`` (default: the stored size; ``output_size``: see
        :meth:`step_size_for`) to convergence, warm-started from the training power vector when there
        is one. Call it after changing the weights by hand, or at the end of training. Returns the
        new step size."""
        return self.step_state.refresh(size, output_size=output_size, iters=iters)

    @property
    def trained_size(self) -> Optional[Tuple[int, ...]]:
        """The input size the stored step size was estimated at (None before the first estimate)."""
        return self.step_state.size

    def warm_state(self) -> Optional[Dict[str, Tensor]]:
        """The warm-start state of the step-size refresh (:meth:`StepSizeState.warm_state
        <csc_cli.step_size.StepSizeState.warm_state>`), so that a resumed run takes exactly the next
        step it would have taken; None when there is none."""
        return self.step_state.warm_state()

    def load_warm_state(self, state: Dict[str, Tensor]) -> None:
        """Restore what :meth:`warm_state` returned (after the model's state dict is loaded)."""
        self.step_state.load_warm_state(state)

    def _forget_step_size(self) -> None:
        self.step_state.forget()

    def _lipschitz_for(self, size: Tuple[int, ...], atoms: Tensor, refresh: bool,
                       geometry: Optional[Geometry] = None) -> Tensor:
        """``L`` at ``size`` for ``geometry`` (default: the layer's own operator); benchmarks time it."""
        return self.step_state.lipschitz(size, self.geometry if geometry is None else geometry, atoms, refresh)

    # ------------------------------------------------------------------ forward
    def _batched(self, x: Tensor, what: str) -> Tuple[Tensor, bool]:
        if x.dim() == self._dim + 1:
            return x.unsqueeze(0), True
        if x.dim() != self._dim + 2:
            raise ValueError(
                f"{type(self).__name__} expects a {self._dim + 2}-D (batched) or {self._dim + 1}-D "
                f"(unbatched) {what}, got shape {tuple(x.shape)}"
            )
        return x, False

    def solve(
        self,
        x: Tensor,
        *,
        lam: Union[None, float, Tensor] = None,
        steps: Optional[int] = None,
        method: Optional[str] = None,
        trace: bool = False,
        z0: Optional[Tensor] = None,
        output_size: Optional[Sequence[int]] = None,
    ) -> Tuple[Tensor, Optional[SolverTrace]]:
        """The sparse code of ``x`` (no bias) and, if asked, per-step diagnostics.

        ``lam`` overrides the layer's (a number, or a per-sample ``(N,)`` tensor), ``steps`` and
        ``method`` override the layer's for this call only; ``output_size`` is the code's spatial
        size (a transposed layer resolves its output padding from it, as ``nn.ConvTranspose`` does).
        Refreshes the step size in training mode.
        """
        z, diag, _ = self._solve(x, lam=lam, steps=steps, method=method, trace=trace, z0=z0, output_size=output_size)
        return z, diag

    def _solve(self, x: Tensor, *, lam=None, steps=None, method=None, trace=False, z0=None,
               output_size=None) -> Tuple[Tensor, Optional[SolverTrace], Tensor]:
        """:meth:`solve`, also returning the step size it used."""
        output_size = self._spatial_output_size(x, output_size)
        x, unbatched = self._batched(x, "input")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"input has {x.shape[1]} channels but in_channels is {self.in_channels}")
        size = tuple(x.shape[2:])
        geometry = self._operator(size, output_size)
        geometry.output_size(size)  # clear errors for inputs too small for the kernel/padding
        atoms = self.atoms
        lip = self.step_state.lipschitz(size, geometry, atoms, refresh=self.training)
        step = self.step_state.step_from(lip)
        lam_value = self.lam if lam is None else lam
        if lam is not None and not isinstance(lam, Tensor):
            lam_value = _check_lam(lam)
        z, diag = solve_lasso(
            x,
            atoms,
            geometry,
            lam_value,
            step,
            self.steps if steps is None else steps,
            nonneg=self.nonneg,
            mu=self.mu,
            method=self.method if method is None else method,
            backward=self.backward,
            z0=z0,
            trace=trace,
            cg_iters=self.cg_iters,
            cg_tol=self.cg_tol,
            surrogate=self.surrogate,
            damping=self.implicit_damping,
            relaxation=self.relaxation,
        )
        return (z.squeeze(0) if unbatched else z), diag, step

    def forward(self, x: Tensor, lam: Union[None, float, Tensor] = None) -> Tensor:
        """The code of ``x`` (in the layer's ``units``; plus the bias, if any): the shape ``nn.ConvNd``
        would return."""
        z, _, step = self._solve(x, lam=lam)
        return self._output(z, step)

    def _gain(self, step: Tensor) -> Optional[Tensor]:
        """The per-channel factor from code to output, ``||atom_m|| / t`` (None in code units)."""
        if self.units == "code":
            return None
        return (self.geometry.atom_norms(self.weight) / step).view(-1, *([1] * self._dim))

    def _output(self, z: Tensor, step: Tensor) -> Tensor:
        gain = self._gain(step)
        if gain is not None:
            z = z * gain
        if self.bias is not None:
            z = z + self.bias.view(-1, *([1] * self._dim))
        return z

    def output_gain(self, size: Sequence[int], output_size: Optional[Sequence[int]] = None) -> Tensor:
        """The per-channel factor ``forward`` multiplies the code by at input size ``size``, shape
        ``(out_channels,)``: ones in code units, ``||atom_m|| / t`` in conv units (pure)."""
        gain = self._gain(self.step_size_for(size, output_size))
        return torch.ones_like(self.lam).expand(self.out_channels) if gain is None else gain.flatten()

    def code_from_output(self, output: Tensor, size: Sequence[int]) -> Tensor:
        """The sparse code behind a :meth:`forward` output for an input of spatial ``size`` (the bias
        removed, conv units divided out): what :meth:`decode` takes."""
        z = output
        if self.bias is not None:
            z = z - self.bias.view(-1, *([1] * self._dim))
        if self.units == "code":
            return z
        gain = self._gain(self.step_size_for(size, tuple(output.shape[-self._dim:])))
        return z if gain is None else z / gain.clamp_min(torch.finfo(z.dtype).tiny)

    def decode(self, z: Tensor, output_size: Optional[Sequence[int]] = None) -> Tensor:
        """``A z`` for a code from :meth:`solve` (or :meth:`code_from_output` of a forward output). ``output_size`` is the input's spatial size; by default the largest size
        whose code has ``z``'s shape (unambiguous for stride 1; the usual even sizes otherwise)."""
        z, unbatched = self._batched(z, "code")
        if z.shape[1] != self.out_channels:
            raise ValueError(f"code has {z.shape[1]} channels but out_channels is {self.out_channels}")
        geometry, size = self._decoder(tuple(z.shape[2:]), output_size)
        x = geometry.synthesis(z, self.atoms, size)
        return x.squeeze(0) if unbatched else x

    def _spatial_output_size(self, x: Tensor, output_size: Optional[Sequence[int]]) -> Optional[Tuple[int, ...]]:
        """``output_size`` as ``nn.ConvTranspose`` takes it (spatial, or with the batch and channel
        dims of ``x`` in front), reduced to its spatial entries."""
        if output_size is None:
            return None
        values = tuple(int(s) for s in output_size)
        leading = 2 if x.dim() == self._dim + 2 else 1
        if len(values) == leading + self._dim:
            values = values[leading:]
        if len(values) != self._dim:
            raise ValueError(f"output_size must have {self._dim} or {leading + self._dim} entries for a "
                             f"{x.dim()}-D input, got {list(output_size)}")
        return values

    def _decoder(self, code_size: Tuple[int, ...], output_size: Optional[Sequence[int]]) -> Tuple[Geometry, Tuple[int, ...]]:
        """The geometry and input size :meth:`decode` synthesises a code of ``code_size`` with."""
        if output_size is None:
            output_size = tuple(hi for _, hi in self.geometry.input_size_range(code_size))
        return self.geometry, tuple(int(s) for s in output_size)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.step_state.loaded(prefix + "lipschitz" in state_dict and prefix + "lipschitz_size" in state_dict)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in (0, (0,) * self._dim, "valid"):
            s += f", padding={self.padding!r}"
        if self.transposed and any(self.output_padding):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1,) * self._dim:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        s += f", lam={float(self.lam):g}, steps={self.steps}, nonneg={self.nonneg}"
        if self.mu:
            s += f", mu={self.mu:g}"
        s += f", method={self.method!r}, backward={self.backward!r}, step_scale={self.step_scale:g}"
        if self.units != "code":
            s += f", units={self.units!r}"
        if self.relaxation is not None and not self.relaxation.plain:
            r = self.relaxation
            s += f", relaxed(lam_scale={r.lam_scale:.3g}, leak={r.leak:.3g}, tail={r.tail:.3g})"
        return s


class CSCConv1d(CSCConvNd):
    """Convolutional sparse coding over sequences; same arguments as ``nn.Conv1d`` plus the
    keyword-only CSC options (``lam, steps, nonneg, mu, method, backward, step_scale, ...``)."""

    _dim = 1
    _conv_name = "Conv1d"


class CSCConv2d(CSCConvNd):
    """Convolutional sparse coding over images; same arguments as ``nn.Conv2d`` plus the
    keyword-only CSC options (``lam, steps, nonneg, mu, method, backward, step_scale, ...``).

    ``layer(x)`` is the code after ``steps`` proximal-gradient steps on
    ``min_z lam ||z||_1 + mu/2 ||z||^2 + 1/2 ||x - A z||^2`` (``z >= 0`` if ``nonneg``), whose shape
    is what ``nn.Conv2d`` would return; ``layer.decode(z)`` is ``A z``, shaped like the input.
    """

    _dim = 2
    _conv_name = "Conv2d"


class CSCConvTransposeNd(CSCConvNd):
    """Sparse deconvolution: the base of :class:`CSCConvTranspose1d` and :class:`CSCConvTranspose2d`.

    The code lives on the transposed conv's output grid and the dictionary synthesises the (smaller)
    input with the strided convolution that is the transposed conv's adjoint (see
    :class:`~csc_cli.core.operators.TransposedConvGeometry`)::

        z* = argmin_{z >= 0} lam ||z||_1 + 1/2 ||x - B z||^2,   B z = conv(z, W_unit, stride, padding, ...)

    solved by the same core as every CSC layer. One step from zero is
    ``relu(t conv_transpose(x, W_unit) - lam t)``: with ``steps=1`` the layer *is* a transposed conv
    with a fixed negative bias and a ReLU. The step size depends on the input size and the output
    padding (``forward(x, output_size)`` may change it), and is estimated and stored per both.
    """

    transposed = True

    def atom_bank(self, normalized: bool = True) -> Tensor:
        """One atom per code channel, ``(out_channels, in_channels / groups, *kernel)``: the weight
        ``(in_channels, out_channels / groups, *kernel)`` regrouped (atom ``(g, m)`` is the g-th
        block of input channels of column ``m``)."""
        w = self.atoms if normalized else self.weight
        g, cin, cout_g = self.groups, w.shape[0], w.shape[1]
        kernel = tuple(w.shape[2:])
        blocks = w.reshape(g, cin // g, cout_g, *kernel).transpose(1, 2)
        return blocks.reshape(g * cout_g, cin // g, *kernel)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups: int = 1,
        bias: bool = False,
        dilation=1,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        lam: float = 0.1,
        steps: int = 2,
        nonneg: bool = True,
        mu: float = 0.0,
        method: str = "fista",
        backward: str = "unrolled",
        step_scale: float = 0.9,
        power_iters: int = 1,
        power_tol: float = 1e-3,
        power_restart: float = 0.05,
        cg_iters: int = 100,
        cg_tol: float = 1e-6,
        units: str = "code",
    ) -> None:
        nn.Module.__init__(self)
        geometry = TransposedConvGeometry.create(
            self._dim, in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, dilation,
            padding_mode,
        )
        self._setup(geometry, bias, device, dtype, lam=lam, steps=steps, nonneg=nonneg, mu=mu, method=method,
                    backward=backward, step_scale=step_scale, power_iters=power_iters, power_tol=power_tol,
                    power_restart=power_restart, cg_iters=cg_iters, cg_tol=cg_tol, units=units)
        # nn.ConvTranspose-compatible attributes
        self.padding = geometry.padding
        self.output_padding = geometry.output_padding
        self.padding_mode = padding_mode

    @classmethod
    def from_record(cls, geometry: Dict[str, Any], options: Dict[str, Any], *, device=None,
                    dtype=None) -> "CSCConvTransposeNd":
        g = geometry
        return cls(g["in_channels"], g["out_channels"], tuple(g["kernel_size"]), stride=tuple(g["stride"]),
                   padding=tuple(g["padding"]), output_padding=tuple(g.get("output_padding", (0,) * cls._dim)),
                   groups=g["groups"], bias=bool(g["bias"]), dilation=tuple(g["dilation"]),
                   padding_mode=g["padding_mode"], device=device, dtype=dtype, **options)

    def geometry_record(self) -> Dict[str, Any]:
        return {**super().geometry_record(), "output_padding": list(self.output_padding)}

    # the operator depends on the output padding as well as the input size
    def _operator(self, size: Tuple[int, ...], output_size: Optional[Sequence[int]] = None) -> Geometry:
        if output_size is None:
            return self.geometry
        return self.geometry.with_output_padding(self.geometry.output_padding_for(size, output_size))

    def _size_record_shape(self) -> Tuple[int, ...]:
        return (2, self._dim)

    def _size_record(self, size: Tuple[int, ...], geometry: Geometry) -> list:
        return [list(size), list(geometry.output_padding)]

    def _parse_size_record(self, record: Any) -> Optional[Tuple[Tuple[int, ...], Geometry]]:
        try:
            size, extra = (tuple(int(v) for v in row) for row in record)
            geometry = self.geometry.with_output_padding(extra)
        except (TypeError, ValueError):
            return None
        if len(size) != self._dim or any(s < 1 for s in size):
            return None
        return size, geometry

    def forward(self, x: Tensor, output_size: Optional[Sequence[int]] = None,
                lam: Union[None, float, Tensor] = None) -> Tensor:
        """The code of ``x`` (plus the bias, if any): the shape ``nn.ConvTranspose`` returns, with
        ``output_size`` resolving the output padding exactly as it does."""
        z, _, step = self._solve(x, lam=lam, output_size=output_size)
        return self._output(z, step)

    def _decoder(self, code_size: Tuple[int, ...], output_size: Optional[Sequence[int]]) -> Tuple[Geometry, Tuple[int, ...]]:
        """``decode(z, output_size)``: ``output_size`` is the input's spatial size; by default the one
        the layer's own output padding maps to ``z``'s size, else the one an output padding below the
        stride does."""
        if output_size is None:
            try:
                size = tuple(hi for _, hi in self.geometry.input_size_range(code_size))
            except ValueError:
                size = self.geometry.natural_input_size(code_size)
        else:
            size = tuple(int(s) for s in output_size)
        return self.geometry.fit(size, code_size), size


class CSCConvTranspose1d(CSCConvTransposeNd):
    """Sparse deconvolution over sequences; same arguments as ``nn.ConvTranspose1d`` (``bias``
    defaults to False) plus the keyword-only CSC options."""

    _dim = 1
    _conv_name = "ConvTranspose1d"


class CSCConvTranspose2d(CSCConvTransposeNd):
    """Sparse deconvolution over images; same arguments as ``nn.ConvTranspose2d`` (``bias`` defaults
    to False) plus the keyword-only CSC options (``lam, steps, nonneg, mu, method, backward, ...``).

    ``layer(x, output_size=None)`` is the code after ``steps`` proximal-gradient steps on
    ``min_z lam ||z||_1 + mu/2 ||z||^2 + 1/2 ||x - B z||^2`` (``z >= 0`` if ``nonneg``) with ``B`` the
    strided conv by the unit-norm atoms, whose shape is what ``nn.ConvTranspose2d`` would return;
    ``layer.decode(z)`` is ``B z``, shaped like the input.
    """

    _dim = 2
    _conv_name = "ConvTranspose2d"


_CSCConvNd = CSCConvNd  # the name before it was public

#: CSC layer classes by name (model cards name a layer's class).
LAYER_CLASSES: Dict[str, type] = {"CSCConv1d": CSCConv1d, "CSCConv2d": CSCConv2d,
                                  "CSCConvTranspose1d": CSCConvTranspose1d, "CSCConvTranspose2d": CSCConvTranspose2d}


def csc_class_for(module: nn.Module) -> Optional[type]:
    """The CSC layer class that replaces ``module`` (a conv or transposed conv, 1-D or 2-D), or None."""
    for conv, cls in ((nn.ConvTranspose1d, CSCConvTranspose1d), (nn.ConvTranspose2d, CSCConvTranspose2d),
                      (nn.Conv1d, CSCConv1d), (nn.Conv2d, CSCConv2d)):
        if isinstance(module, conv):
            return cls
    return None


def csc_layers(model: nn.Module) -> Dict[str, CSCConvNd]:
    """The CSC layers of ``model`` by qualified name, in registration order (the stem first)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, CSCConvNd)}


# ----------------------------------------------------------------------------- conv -> CSC
# What counts as a convolution and the one constructor of a CSC layer from one (``from_conv``,
# :func:`csc_cli.convert` and the model files' ``to_csc`` edits all use it).
def _timm_classes() -> Dict[str, type]:
    try:
        from timm import layers as tl
    except ImportError:  # pragma: no cover - timm is a core dependency
        return {}
    names = ["Conv2dSame", "StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame", "CondConv2d"]
    return {n: getattr(tl, n) for n in names if hasattr(tl, n)}


def conv_kind(module: nn.Module) -> Optional[str]:
    """How ``module`` is understood: 'conv', 'conv_t' (a transposed conv: sparse deconvolution),
    'same', 'std', 'std_same', 'csc', a skip reason prefixed with '!', or None when it is not a
    convolution at all."""
    timm = _timm_classes()
    if isinstance(module, CSCConvNd):
        return "csc"
    if "CondConv2d" in timm and isinstance(module, timm["CondConv2d"]):
        return "!per-sample (conditionally parameterised) kernels are not a fixed dictionary"
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        return "!3-D convolutions are not supported (1-D and 2-D convolutions and transposed convolutions only)"
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        return "!lazy convolution with uninitialised weights: run one forward first"
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
        cls = type(module)
        if cls.forward is not nn.ConvTranspose1d.forward and cls.forward is not nn.ConvTranspose2d.forward:
            return f"!{cls.__name__} has its own forward with unknown semantics"
        return "conv_t"
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return None
    cls = type(module)
    for name, kind in (("StdConv2dSame", "std_same"), ("ScaledStdConv2dSame", "std_same"),
                       ("StdConv2d", "std"), ("ScaledStdConv2d", "std"), ("Conv2dSame", "same")):
        if name in timm and cls is timm[name]:
            return kind
    if cls.forward is not nn.Conv1d.forward and cls.forward is not nn.Conv2d.forward:
        return f"!{cls.__name__} has its own forward with unknown semantics"
    return "conv"


def convertible(kind: Optional[str]) -> bool:
    return kind is not None and not kind.startswith("!") and kind != "csc"


@torch.no_grad()
def applied_weight(module: nn.Module, kind: str) -> torch.Tensor:
    """The weight the conv actually applies: for weight-standardised convs, the standardised one."""
    if kind in ("std", "std_same"):
        scale = None
        if hasattr(module, "gain") and hasattr(module, "scale"):
            scale = (module.gain * module.scale).reshape(-1)
        return F.batch_norm(
            module.weight.reshape(1, module.out_channels, -1), None, None, weight=scale,
            training=True, momentum=0.0, eps=module.eps,
        ).reshape_as(module.weight)
    return module.weight.detach()


def conv_geometry(module: nn.Module, kind: str) -> Dict[str, Any]:
    """The geometry record (see :meth:`CSCConvNd.geometry_record`) a conv converts to (a
    transposed conv's has its ``output_padding`` too)."""
    if kind == "conv_t":
        return {
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": list(module.padding),
            "dilation": list(module.dilation),
            "groups": module.groups,
            "bias": module.bias is not None,
            "padding_mode": module.padding_mode,
            "output_padding": list(module.output_padding),
        }
    tf_same = kind == "same" or (kind == "std_same" and getattr(module, "same_pad", False))
    return {
        "in_channels": module.in_channels,
        "out_channels": module.out_channels,
        "kernel_size": list(module.kernel_size),
        "stride": list(module.stride),
        "padding": "tf_same" if tf_same else (module.padding if isinstance(module.padding, str)
                                               else list(module.padding)),
        "dilation": list(module.dilation),
        "groups": module.groups,
        "bias": module.bias is not None,
        "padding_mode": module.padding_mode,
    }


def _check_options(options: Dict[str, Any]) -> None:
    unknown = set(options) - set(CSC_OPTION_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown CSC option(s) {sorted(unknown)}; valid: {sorted(CSC_OPTION_DEFAULTS)}")


def csc_layer_for(module: nn.Module, kind: Optional[str] = None, **options: Any) -> CSCConvNd:
    """A CSC layer with ``module``'s geometry, dtype, device, memory format, training flag and
    ``requires_grad``, whose dictionary is the weight ``module`` applies (and bias its bias)."""
    kind = kind or conv_kind(module)
    if not convertible(kind):
        raise ValueError(f"{type(module).__name__} cannot become a CSC layer: {kind or 'not a convolution'}")
    _check_options(options)
    cls = csc_class_for(module)
    weight = module.weight  # a transposed conv's weight is its dictionary as is: same shape
    layer = cls.from_record(conv_geometry(module, kind), options, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(applied_weight(module, kind))
        if module.bias is not None:
            layer.bias.copy_(module.bias)
    if weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        layer.to(memory_format=torch.channels_last)
    layer.weight.requires_grad_(weight.requires_grad)
    if module.bias is not None:
        layer.bias.requires_grad_(module.bias.requires_grad)
    layer.train(module.training)
    layer._forget_step_size()
    return layer
