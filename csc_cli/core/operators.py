"""The convolutional dictionary operator pair, for any conv geometry.

A convolutional sparse coding layer with dictionary ``D`` (shaped like a conv weight,
``(C_out, C_in / groups, *kernel)``) works with two linear maps:

* ``A^T`` -- *analysis*: ``A^T x = conv(pad(x), D)``. This is exactly what ``nn.Conv1d``/``nn.Conv2d``
  compute (without bias), so the code ``z`` has the conv's output shape.
* ``A`` -- *synthesis*: the exact adjoint of ``A^T``, ``A z = pad^T(conv_transpose(z, D))``, with
  output padding chosen so that ``A z`` has the input's shape, and ``pad^T`` the adjoint of the
  padding (a crop for zeros, a fold for reflect/replicate/circular).

:class:`TransposedConvGeometry` is the same interface for sparse *deconvolution* (a drop-in for
``nn.ConvTranspose1d``/``2d``): analysis is the transposed conv, synthesis the strided conv that is
its adjoint. :func:`power_iteration`, :func:`lipschitz_upper_bound`, :func:`dense_matrix` and the
solver in :mod:`csc_cli.core.lasso` take either, and go through the geometry for everything that
depends on the weight's layout (``weight_shape``, ``normalize_atoms``, channel counts).

Everything here is pure tensor math: no modules, no state, no I/O. Shapes follow PyTorch:
``x`` is ``(N, C_in, *size)``, ``z`` is ``(N, C_out, *out_size)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

_CONV = {1: F.conv1d, 2: F.conv2d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d}

IntOrTuple = Union[int, Sequence[int]]


def _tuple(value: IntOrTuple, dim: int, name: str) -> Tuple[int, ...]:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a tuple of {dim} ints, got {value!r}")
    if isinstance(value, int):
        return (value,) * dim
    try:
        values = tuple(int(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} must be an int or a tuple of {dim} ints, got {value!r}") from None
    if len(values) != dim:
        raise ValueError(f"{name} must have {dim} entries for a {dim}-D conv, got {value!r}")
    return values


def _check_common(dim: int, in_channels: int, out_channels: int, groups: int, kernel_size: IntOrTuple,
                  stride: IntOrTuple, dilation: IntOrTuple) -> Tuple[Tuple[int, ...], ...]:
    """The checks every convolution geometry shares; returns (kernel, stride, dilation) tuples."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if in_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) must be divisible by groups ({groups})")
    if out_channels % groups:
        raise ValueError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")
    kernel = _tuple(kernel_size, dim, "kernel_size")
    stride_t = _tuple(stride, dim, "stride")
    dilation_t = _tuple(dilation, dim, "dilation")
    if min(kernel) < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size!r}")
    if min(stride_t) < 1:
        raise ValueError(f"stride must be >= 1, got {stride!r}")
    if min(dilation_t) < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation!r}")
    return kernel, stride_t, dilation_t


@dataclass(frozen=True)
class ConvGeometry:
    """Geometry of a convolution: everything but the weights.

    ``padding`` is stored resolved, as one ``(before, after)`` pair per spatial dimension, so
    ``'same'`` with an even kernel (asymmetric, as in PyTorch: the extra pixel goes after) and
    ``'valid'`` need no special cases downstream. ``padding='tf_same'`` is TensorFlow's SAME (timm's
    ``Conv2dSame``): zero padding that depends on the input size, so ``ceil(size / stride)`` outputs;
    such a geometry is resolved to a static one per input size (:meth:`resolve`).
    """

    dim: int
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Tuple[Tuple[int, int], ...]
    dilation: Tuple[int, ...]
    groups: int
    padding_mode: str
    tf_same: bool = False

    transposed = False  # a class constant (not a field): see TransposedConvGeometry

    @classmethod
    def create(
        cls,
        dim: int,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: Union[str, IntOrTuple] = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
    ) -> "ConvGeometry":
        """Validate nn.Conv-style arguments; every error names the argument at fault."""
        if dim not in _CONV:
            raise ValueError(f"dim must be 1 or 2, got {dim!r}")
        kernel, stride_t, dilation_t = _check_common(dim, in_channels, out_channels, groups, kernel_size, stride,
                                                     dilation)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
        tf_same = False
        if isinstance(padding, str):
            if padding == "tf_same":
                if padding_mode != "zeros":
                    raise ValueError("padding='tf_same' pads with zeros: use padding_mode='zeros'")
                tf_same = True
                pads = tuple((0, 0) for _ in range(dim))
            elif padding == "valid":
                pads = tuple((0, 0) for _ in range(dim))
            elif padding == "same":
                if max(stride_t) != 1:
                    raise ValueError("padding='same' needs stride=1 (as in nn.Conv2d); give explicit padding")
                pads = tuple(
                    (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation_t)
                )
            else:
                raise ValueError(f"padding must be an int, a tuple, 'same', 'valid' or 'tf_same', got {padding!r}")
        else:
            sym = _tuple(padding, dim, "padding")
            if min(sym) < 0:
                raise ValueError(f"padding must be >= 0, got {padding!r}")
            pads = tuple((p, p) for p in sym)
        return cls(dim, in_channels, out_channels, kernel, stride_t, pads, dilation_t, groups, padding_mode, tf_same)

    def resolve(self, input_size: Sequence[int]) -> "ConvGeometry":
        """The static geometry used for an input of ``input_size`` (itself unless ``tf_same``)."""
        return _resolve_tf_same(self, tuple(int(s) for s in input_size)) if self.tf_same else self

    # ------------------------------------------------------------------ sizes
    @property
    def weight_shape(self) -> Tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _extent(self, i: int) -> int:
        """Span of the dilated kernel along spatial dimension ``i``."""
        return self.dilation[i] * (self.kernel_size[i] - 1) + 1

    def output_size(self, input_size: Sequence[int]) -> Tuple[int, ...]:
        """Spatial size of the code for an input of spatial size ``input_size``.

        Raises ``ValueError`` when the input is too small for the kernel or, for reflect/circular
        padding, for the padding -- the cases where ``A`` cannot be inverted to the input shape.
        """
        input_size = tuple(int(s) for s in input_size)
        if len(input_size) != self.dim:
            raise ValueError(f"expected {self.dim} spatial dims, got input size {input_size}")
        if self.tf_same:
            return self.resolve(input_size).output_size(input_size)
        out = []
        for i, size in enumerate(input_size):
            before, after = self.padding[i]
            if self.padding_mode == "reflect" and max(before, after) >= size:
                raise ValueError(
                    f"reflect padding {max(before, after)} needs an input larger than it, got size {size}"
                )
            if self.padding_mode == "circular" and max(before, after) > size:
                raise ValueError(
                    f"circular padding {max(before, after)} needs an input at least as large, got size {size}"
                )
            padded = size + before + after
            if padded < self._extent(i):
                raise ValueError(
                    f"input size {tuple(input_size)} is smaller than the kernel extent "
                    f"{tuple(self._extent(j) for j in range(self.dim))} after padding"
                )
            out.append((padded - self._extent(i)) // self.stride[i] + 1)
        return tuple(out)

    def input_size_range(self, output_size: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
        """Per dimension, the (smallest, largest) input sizes that give ``output_size``."""
        ranges = []
        if self.tf_same:  # ceil(size / stride) outputs
            return tuple(((int(o) - 1) * s + 1, int(o) * s) for o, s in zip(output_size, self.stride))
        for i, size in enumerate(output_size):
            before, after = self.padding[i]
            smallest = (int(size) - 1) * self.stride[i] + self._extent(i) - before - after
            ranges.append((max(smallest, 1), smallest + self.stride[i] - 1))
        return tuple(ranges)

    # ---------------------------------------------------------------- padding
    @property
    def _symmetric_zeros(self) -> bool:
        return self.padding_mode == "zeros" and all(b == a for b, a in self.padding)

    def _torch_pad(self) -> Tuple[int, ...]:
        """The padding as F.pad wants it: last dimension first."""
        flat: list = []
        for before, after in reversed(self.padding):
            flat += [before, after]
        return tuple(flat)

    def pad(self, x: Tensor) -> Tensor:
        """``P x``: the padded input the convolution slides over."""
        if self.tf_same:
            return self.resolve(x.shape[2:]).pad(x)
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        if not any(b or a for b, a in self.padding):
            return x
        return F.pad(x, self._torch_pad(), mode=mode)

    def pad_adjoint(self, padded: Tensor) -> Tensor:
        """``P^T p``: fold a padded tensor back onto the input grid (exact adjoint of ``pad``)."""
        if self.tf_same:
            raise ValueError("a tf_same geometry pads by input size: resolve(input_size) first")
        out = padded
        for i, (before, after) in enumerate(self.padding):
            if before or after:
                out = _pad_adjoint_1d(out, 2 + i, before, after, self.padding_mode)
        return out

    # -------------------------------------------------------------- operators
    def analysis(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``A^T x (+ bias)``: the convolution, with exactly ``nn.ConvNd``'s output shape."""
        if self.tf_same:
            return self.resolve(x.shape[2:]).analysis(x, weight, bias)
        conv = _CONV[self.dim]
        if self._symmetric_zeros:
            return conv(x, weight, bias, self.stride, tuple(b for b, _ in self.padding), self.dilation, self.groups)
        return conv(self.pad(x), weight, bias, self.stride, 0, self.dilation, self.groups)

    def normalize_atoms(self, weight: Tensor, eps: float = 1e-12) -> Tensor:
        """The dictionary at unit-norm atoms: an atom is one output channel's filter, ``weight[m]``."""
        return normalize_atoms(weight, eps)

    def atom_norms(self, weight: Tensor) -> Tensor:
        """``||atom_m||_2`` per code channel ``m``, shape ``(out_channels,)``."""
        return weight.reshape(weight.shape[0], -1).norm(dim=1)

    def synthesis(self, z: Tensor, weight: Tensor, input_size: Sequence[int]) -> Tensor:
        """``A z``: the exact adjoint of :meth:`analysis`, shaped like an input of ``input_size``."""
        input_size = tuple(int(s) for s in input_size)
        if self.tf_same:
            return self.resolve(input_size).synthesis(z, weight, input_size)
        expected = self.output_size(input_size)
        if tuple(z.shape[2:]) != expected:
            raise ValueError(
                f"code of spatial size {tuple(z.shape[2:])} does not come from an input of size "
                f"{input_size} (expected {expected})"
            )
        conv_t = _CONV_T[self.dim]
        if self._symmetric_zeros:
            pads = tuple(b for b, _ in self.padding)
            extra = tuple(
                size + 2 * p - ((o - 1) * s + e)
                for size, p, o, s, e in zip(
                    input_size, pads, expected, self.stride, (self._extent(i) for i in range(self.dim))
                )
            )
            return conv_t(z, weight, None, self.stride, pads, extra, self.groups, self.dilation)
        padded = tuple(size + b + a for size, (b, a) in zip(input_size, self.padding))
        extra = tuple(
            p - ((o - 1) * s + self._extent(i)) for i, (p, o, s) in enumerate(zip(padded, expected, self.stride))
        )
        full = conv_t(z, weight, None, self.stride, 0, extra, self.groups, self.dilation)
        return self.pad_adjoint(full)


@dataclass(frozen=True)
class TransposedConvGeometry:
    """Geometry of a *transposed* convolution (``nn.ConvTranspose1d``/``2d``): the same interface as
    :class:`ConvGeometry`, for sparse deconvolution.

    The weight ``W`` has ``nn.ConvTranspose``'s shape ``(C_in, C_out / groups, *kernel)``; the code
    lives on the transposed conv's (larger) output grid and the dictionary synthesises the input
    with the strided convolution that is the transposed conv's adjoint:

    * ``B^T`` -- *analysis*: ``conv_transpose(x, W)``, exactly ``nn.ConvTranspose`` (without bias);
    * ``B`` -- *synthesis*: ``conv(z, W)`` with the same stride, padding, dilation and groups,
      cropped to the input's size (the crop matters only when ``output_padding >= stride``, where the
      strided conv of the output grid reaches past the input).

    An atom is one column of ``B``: for code channel ``o = g * (C_out / groups) + m``, the filters
    ``W[g * C_in / groups : (g + 1) * C_in / groups, m]`` (:meth:`normalize_atoms`). Only zero padding
    exists for transposed convs (as in PyTorch). ``output_padding`` is part of the operator: the
    layer resolves it per call from ``output_size`` (:meth:`output_padding_for`, :meth:`with_output_padding`).
    """

    dim: int
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    output_padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    groups: int
    padding_mode: str = "zeros"

    transposed = True
    tf_same = False

    @classmethod
    def create(
        cls,
        dim: int,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        output_padding: IntOrTuple = 0,
        groups: int = 1,
        dilation: IntOrTuple = 1,
        padding_mode: str = "zeros",
    ) -> "TransposedConvGeometry":
        """Validate nn.ConvTranspose-style arguments (in its order); every error names the argument."""
        if dim not in _CONV_T:
            raise ValueError(f"dim must be 1 or 2, got {dim!r}")
        kernel, stride_t, dilation_t = _check_common(dim, in_channels, out_channels, groups, kernel_size, stride,
                                                     dilation)
        if isinstance(padding, str):
            raise ValueError(f"padding must be an int or a tuple of ints for a transposed conv, got {padding!r}")
        pads = _tuple(padding, dim, "padding")
        if min(pads) < 0:
            raise ValueError(f"padding must be >= 0, got {padding!r}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' for a transposed conv (as in PyTorch), got {padding_mode!r}")
        geometry = cls(dim, in_channels, out_channels, kernel, stride_t, pads, (0,) * dim, dilation_t, groups)
        return geometry.with_output_padding(output_padding)

    def with_output_padding(self, output_padding: IntOrTuple) -> "TransposedConvGeometry":
        """This geometry with another ``output_padding`` (each entry below ``max(stride, dilation)``)."""
        extra = _tuple(output_padding, self.dim, "output_padding")
        for op, s, d in zip(extra, self.stride, self.dilation):
            if not 0 <= op < max(s, d):
                raise ValueError(
                    f"output_padding must be >= 0 and smaller than stride or dilation, got {output_padding!r} "
                    f"(stride {self.stride}, dilation {self.dilation})"
                )
        return self if extra == self.output_padding else replace(self, output_padding=extra)

    def resolve(self, input_size: Sequence[int]) -> "TransposedConvGeometry":
        return self

    # ------------------------------------------------------------------ sizes
    @property
    def weight_shape(self) -> Tuple[int, ...]:
        return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)

    def _extent(self, i: int) -> int:
        return self.dilation[i] * (self.kernel_size[i] - 1) + 1

    def _smallest_output(self, input_size: Sequence[int]) -> Tuple[int, ...]:
        """The output size without output padding: ``(size - 1) * stride - 2 * padding + extent``."""
        return tuple(
            (int(n) - 1) * self.stride[i] - 2 * self.padding[i] + self._extent(i) for i, n in enumerate(input_size)
        )

    def output_size(self, input_size: Sequence[int]) -> Tuple[int, ...]:
        """Spatial size of the code (``nn.ConvTranspose``'s output) for an input of ``input_size``."""
        input_size = tuple(int(s) for s in input_size)
        if len(input_size) != self.dim:
            raise ValueError(f"expected {self.dim} spatial dims, got input size {input_size}")
        out = tuple(o + p for o, p in zip(self._smallest_output(input_size), self.output_padding))
        if min(input_size) < 1 or min(out) < 1:
            raise ValueError(
                f"input size {input_size} gives an empty output {out} (padding {self.padding} is too large)"
            )
        return out

    def output_padding_for(self, input_size: Sequence[int], output_size: Sequence[int]) -> Tuple[int, ...]:
        """The output padding that gives ``output_size`` for an input of ``input_size``, exactly as
        ``nn.ConvTranspose``'s ``forward(x, output_size)`` resolves it (valid sizes: the smallest
        output up to ``stride - 1`` more); a ``ValueError`` naming ``output_size`` otherwise."""
        input_size = tuple(int(s) for s in input_size)
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) != self.dim:
            raise ValueError(f"output_size must have {self.dim} spatial entries, got {output_size}")
        lo = self._smallest_output(input_size)
        hi = tuple(m + s - 1 for m, s in zip(lo, self.stride))
        if any(not a <= o <= b for o, a, b in zip(output_size, lo, hi)):
            raise ValueError(
                f"output_size {list(output_size)} cannot be produced: valid sizes range from {list(lo)} to "
                f"{list(hi)} for an input of size {list(input_size)}"
            )
        return tuple(o - a for o, a in zip(output_size, lo))

    def fit(self, input_size: Sequence[int], output_size: Sequence[int]) -> "TransposedConvGeometry":
        """This geometry with the output padding (any allowed one) that maps ``input_size`` to
        ``output_size`` -- for synthesis from a code of a given size; a ``ValueError`` if none does."""
        lo = self._smallest_output(input_size)
        extra = tuple(int(o) - a for o, a in zip(output_size, lo))
        if len(extra) != self.dim or any(not 0 <= e < max(s, d) for e, s, d in zip(extra, self.stride, self.dilation)):
            raise ValueError(
                f"a code of spatial size {tuple(int(o) for o in output_size)} does not come from an input of size "
                f"{tuple(int(s) for s in input_size)} under this transposed conv"
            )
        return self.with_output_padding(extra)

    def natural_input_size(self, output_size: Sequence[int]) -> Tuple[int, ...]:
        """The input size whose output, with an output padding below the stride, is ``output_size``
        (the strided convolution's output size on that grid)."""
        size = tuple(
            (int(o) + 2 * p - self._extent(i)) // s + 1
            for i, (o, p, s) in enumerate(zip(output_size, self.padding, self.stride))
        )
        if min(size) < 1:
            raise ValueError(f"a code of spatial size {tuple(output_size)} is too small for this transposed conv")
        return size

    def input_size_range(self, output_size: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
        """Per dimension, the (smallest, largest) input sizes that give ``output_size`` with this
        geometry's output padding: one size, or a ``ValueError`` when none gives it."""
        ranges = []
        for i, o in enumerate(output_size):
            span = int(o) - self.output_padding[i] + 2 * self.padding[i] - self._extent(i)
            if span < 0 or span % self.stride[i]:
                raise ValueError(
                    f"no input gives an output of size {tuple(output_size)} with output_padding {self.output_padding}"
                )
            n = span // self.stride[i] + 1
            ranges.append((n, n))
        return tuple(ranges)

    # -------------------------------------------------------------- operators
    def normalize_atoms(self, weight: Tensor, eps: float = 1e-12) -> Tensor:
        """The dictionary at unit-norm atoms: atom ``(g, m)`` is ``W[g-th block of C_in, m]``."""
        g, cin, cout_g = self.groups, weight.shape[0], weight.shape[1]
        norms = self._block_norms(weight).clamp_min(eps)  # (groups, C_out / groups)
        norms = norms.repeat_interleave(cin // g, dim=0)  # (C_in, C_out / groups), one row per filter
        return weight / norms.view(cin, cout_g, *([1] * (weight.dim() - 2)))

    def _block_norms(self, weight: Tensor) -> Tensor:
        g, cin, cout_g = self.groups, weight.shape[0], weight.shape[1]
        return torch.linalg.vector_norm(weight.reshape(g, cin // g, cout_g, -1), dim=(1, 3))

    def atom_norms(self, weight: Tensor) -> Tensor:
        """``||atom_m||_2`` per code channel ``m`` (``m = g * C_out / groups + j``), shape ``(out_channels,)``."""
        return self._block_norms(weight).reshape(-1)

    def analysis(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``B^T x (+ bias)``: the transposed convolution, exactly ``nn.ConvTranspose``."""
        return _CONV_T[self.dim](
            x, weight, bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )

    def synthesis(self, z: Tensor, weight: Tensor, input_size: Sequence[int]) -> Tensor:
        """``B z``: the exact adjoint of :meth:`analysis` (a strided conv), shaped like an input of
        ``input_size``."""
        input_size = tuple(int(s) for s in input_size)
        expected = self.output_size(input_size)
        if tuple(z.shape[2:]) != expected:
            raise ValueError(
                f"code of spatial size {tuple(z.shape[2:])} does not come from an input of size "
                f"{input_size} (expected {expected})"
            )
        out = _CONV[self.dim](z, weight, None, self.stride, self.padding, self.dilation, self.groups)
        for i, size in enumerate(input_size):  # output_padding >= stride: the conv reaches past the input
            if out.shape[2 + i] != size:
                out = out.narrow(2 + i, 0, size)
        return out


#: Either operator pair: everything in :mod:`csc_cli.core` takes one.
Geometry = Union[ConvGeometry, TransposedConvGeometry]


@functools.lru_cache(maxsize=256)
def _resolve_tf_same(geometry: ConvGeometry, input_size: Tuple[int, ...]) -> ConvGeometry:
    pads = []
    for size, k, s, d in zip(input_size, geometry.kernel_size, geometry.stride, geometry.dilation):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    return replace(geometry, padding=tuple(pads), tf_same=False)


def _pad_adjoint_1d(p: Tensor, axis: int, before: int, after: int, mode: str) -> Tensor:
    """Adjoint of padding one axis by (before, after) in ``mode``: every padded entry is added back
    onto the input entry it was copied from (zeros padding copies nothing, so it is a crop)."""
    size = p.shape[axis] - before - after
    x = p.narrow(axis, before, size)
    if mode == "zeros":
        return x
    x = x.clone()
    head = p.narrow(axis, 0, before)
    tail = p.narrow(axis, before + size, after)
    if mode == "circular":
        # P[i] = x[(i - before) mod size]
        if before:
            x.narrow(axis, size - before, before).add_(head)
        if after:
            x.narrow(axis, 0, after).add_(tail)
    elif mode == "replicate":
        # P[i] = x[clamp(i - before, 0, size - 1)]
        if before:
            x.narrow(axis, 0, 1).add_(head.sum(axis, keepdim=True))
        if after:
            x.narrow(axis, size - 1, 1).add_(tail.sum(axis, keepdim=True))
    elif mode == "reflect":
        # left pad is x[before], ..., x[1]; right pad is x[size-2], ..., x[size-1-after]
        if before:
            x.narrow(axis, 1, before).add_(head.flip(axis))
        if after:
            x.narrow(axis, size - 1 - after, after).add_(tail.flip(axis))
    else:  # pragma: no cover - guarded by ConvGeometry.create
        raise ValueError(f"unknown padding mode {mode!r}")
    return x


# ---------------------------------------------------------------------- norms
def normalize_atoms(weight: Tensor, eps: float = 1e-12) -> Tensor:
    """Atoms at unit l2 norm: ``weight[m] / ||weight[m]||_2`` for every output channel ``m``."""
    flat = weight.reshape(weight.shape[0], -1)
    norms = flat.norm(dim=1).clamp_min(eps)
    return weight / norms.view(-1, *([1] * (weight.dim() - 1)))


def _start_block(geometry: Geometry, size: Sequence[int], block: int, device, dtype) -> Tensor:
    """A fixed, seeded start for power iteration: the same numbers on every device and run."""
    gen = torch.Generator(device="cpu").manual_seed(0x5D)
    v = torch.randn((block, geometry.in_channels, *size), generator=gen, dtype=torch.float64)
    return _orthonormal_rows(v).to(device=device, dtype=dtype)


def _orthonormal_rows(v: Tensor) -> Tensor:
    """Orthonormalise the ``block`` vectors stacked along dim 0 (thin QR of the n x block matrix)."""
    if v.shape[0] == 1:
        return v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
    q, _ = torch.linalg.qr(v.flatten(1).T)
    return q.T.reshape(v.shape)


def _top_eigenvalue_psd(gram: Tensor, squarings: int = 6) -> Tensor:
    """Largest eigenvalue of a small symmetric PSD matrix without leaving the device (no sync):
    repeated squaring (``G^64``) then a Rayleigh quotient -- a lower bound, tight unless the top two
    eigenvalues nearly tie, where either value is as good."""
    g = gram
    for _ in range(squarings):
        g = g @ g
        g = g / g.diagonal().sum().clamp_min(torch.finfo(g.dtype).tiny)
    # G^64 is close to rank one (u u^T): its column with the largest diagonal entry is along u
    v = g.index_select(1, g.diagonal().argmax().reshape(1)).squeeze(1)
    return (v @ gram @ v) / (v @ v).clamp_min(torch.finfo(g.dtype).tiny)


def _solver_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


@torch.no_grad()
def power_iteration(
    geometry: Geometry,
    weight: Tensor,
    input_size: Sequence[int],
    *,
    v0: Tensor | None = None,
    block: int = 4,
    iters: int = 100,
    min_iters: int = 10,
    tol: float = 1e-4,
    previous: Tensor | None = None,
) -> Tuple[Tensor, Tensor, int]:
    """Estimate ``L = ||A||^2 = lambda_max(A A^T)`` at ``input_size`` by block power iteration.

    Iterates a block of ``block`` orthonormal vectors on the input side (``V <- orth(A A^T V)``)
    and returns ``(L, V, iterations)`` with ``L`` the largest Ritz value of ``A A^T`` on ``span(V)``:
    always a lower bound of the true value, approaching it from below. A block converges where a
    single vector stalls on near-ties at the top of the spectrum; ``block=1`` is plain power
    iteration (the cheap warm refresh during training).

    ``v0`` (a previous ``V``) warm-starts the training refresh; without it the start is fixed and
    seeded, so the estimate is a deterministic function of weight and size. Iteration stops after
    ``min_iters`` once ``L`` changes by less than ``tol`` (relative) from one iteration to the next --
    for the first, from ``previous`` (the last estimate, when warm-starting) -- or after ``iters``.
    ``tol = 0`` runs exactly ``min_iters`` iterations and never syncs with the device.
    Runs in float32 or float64 with autocast off, whatever the caller's precision.
    """
    size = tuple(int(s) for s in input_size)
    dtype = _solver_dtype(weight.dtype)
    w = weight.detach().to(dtype).contiguous()  # same numbers whatever the memory format
    block = max(1, min(block, geometry.in_channels * math.prod(size)))
    with torch.autocast(device_type=w.device.type, enabled=False):
        if v0 is None or tuple(v0.shape) != (block, geometry.in_channels, *size):
            v = _start_block(geometry, size, block, w.device, dtype)
        else:
            v = _orthonormal_rows(v0.detach().to(device=w.device, dtype=dtype))
        lip = torch.zeros((), dtype=dtype, device=w.device) if previous is None else previous.to(dtype)
        if tol <= 0:
            iters = min_iters
        done = 0
        for done in range(1, iters + 1):
            code = geometry.analysis(v, w)
            flat = code.flatten(1)
            new = flat.square().sum() if block == 1 else _top_eigenvalue_psd(flat @ flat.T)  # V^T A A^T V
            v = _orthonormal_rows(geometry.synthesis(code, w, size))
            # The convergence test syncs with the device: a fixed count (tol = 0) never pays for it.
            converged = min_iters <= done < iters and bool((new - lip).abs() <= tol * new)
            lip = new
            if converged:
                break
    return lip, v, done


@torch.no_grad()
def lipschitz_upper_bound(geometry: Geometry, weight: Tensor, input_size: Sequence[int]) -> Tensor:
    """A certified upper bound on ``||A||^2`` at ``input_size`` (Schur's test).

    ``||A||^2 <= ||A||_1 ||A||_inf``, and the row/column sums of ``|A|`` are bounded by applying the
    operators built from ``|D|`` to all-ones tensors (padding only ever copies entries, so it cannot
    make a sum smaller). Loose (often 2-10x), but never below the truth at any size: useful as a
    sanity check and as a cap.
    """
    size = tuple(int(s) for s in input_size)
    w = weight.detach().abs().to(_solver_dtype(weight.dtype))
    with torch.autocast(device_type=w.device.type, enabled=False):
        ones_in = torch.ones((1, geometry.in_channels, *size), dtype=w.dtype, device=w.device)
        row = geometry.analysis(ones_in, w).amax()
        out_size = geometry.output_size(size)
        ones_out = torch.ones((1, geometry.out_channels, *out_size), dtype=w.dtype, device=w.device)
        col = geometry.synthesis(ones_out, w, size).amax()
    return row * col


def dense_matrix(geometry: Geometry, weight: Tensor, input_size: Sequence[int]) -> Tensor:
    """The analysis operator ``A^T`` as a dense ``(n_code, n_input)`` matrix, for small problems
    (tests, inspection). Built column by column from one-hot inputs."""
    size = tuple(int(s) for s in input_size)
    n_in = geometry.in_channels * math.prod(size)
    eye = torch.eye(n_in, dtype=weight.dtype, device=weight.device).view(n_in, geometry.in_channels, *size)
    cols = geometry.analysis(eye, weight.detach()).reshape(n_in, -1)
    return cols.T.contiguous()
