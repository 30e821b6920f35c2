"""Test-time lambda: change it per layer, or choose it per input with a calibrated rule.

SDNet's robustness claim: raising the first CSC layer's lambda at test time recovers stable codes
from noisy inputs. :func:`lambda_override` sets lambdas for a block of code and restores them;
:class:`LambdaRule` is the label-free rule ``lambda(x) = a * r(x) + b`` fitted on corrupted training
images, with ``r(x)`` the first layer's reconstruction error per input value,
``||x - A z||^2 / numel(x)`` for the code ``z`` at the layer's trained lambda.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..layers import CSCConvNd, csc_layers


def csc_layer_names(model: nn.Module) -> List[str]:
    """The CSC layers of ``model``, in registration order (the stem first)."""
    return list(csc_layers(model))


def layer_lambdas(model: nn.Module) -> Dict[str, float]:
    """Each CSC layer's current lambda, by name, the stem first."""
    return {n: float(m.lam) for n, m in csc_layers(model).items()}


def first_csc_layer(model: nn.Module) -> str:
    names = csc_layer_names(model)
    if not names:
        raise ValueError("this model has no CSC layer: test-time lambda does not apply")
    return names[0]


@contextlib.contextmanager
def lambda_override(model: nn.Module, values: Dict[str, float]) -> Iterator[None]:
    """Set the lambda of the named CSC layers inside the block; restore them afterwards."""
    layers = dict(model.named_modules())
    saved = {}
    for name, value in values.items():
        layer = layers.get(name)
        if not isinstance(layer, CSCConvNd):
            raise ValueError(f"{name!r} is not a CSC layer of this model (CSC layers: {csc_layer_names(model)})")
        saved[name] = layer.lam.clone()
        layer.lam = value
    try:
        yield
    finally:
        for name, value in saved.items():
            layers[name].lam.copy_(value)


def residual_energy(layer: CSCConvNd, x: Tensor, lam: Optional[float] = None) -> Tensor:
    """``||x - A z||^2 / numel`` per sample, ``z`` the layer's code of ``x`` at ``lam`` (default:
    its own lambda); differentiable in ``x``."""
    z, _ = layer.solve(x, lam=lam)
    residual = x - layer.decode(z, x.shape[2:])
    return residual.square().flatten(1).mean(1)


@torch.no_grad()
def reconstruction_error(layer: CSCConvNd, x: Tensor, lam: Optional[float] = None) -> Tensor:
    """:func:`residual_energy` without a graph."""
    return residual_energy(layer, x, lam)


@dataclass
class LambdaRule:
    """``lambda(x) = clamp(a * r(x) + b, lo, hi)`` for the CSC layer ``layer``."""

    layer: str
    a: float
    b: float
    reference_lam: float  # the lambda at which r(x) is measured (the layer's trained one)
    lo: float = 0.0
    hi: float = 10.0
    points: Optional[List[Dict[str, float]]] = None  # (r, best lambda) pairs it was fitted on

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict) -> "LambdaRule":
        if not isinstance(data, dict):
            raise ValueError("the stored lambda rule is not an object")
        try:
            rule = cls(layer=str(data["layer"]), a=float(data["a"]), b=float(data["b"]),
                       reference_lam=float(data["reference_lam"]), lo=float(data.get("lo", 0.0)),
                       hi=float(data.get("hi", 10.0)), points=data.get("points"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"the stored lambda rule is malformed ({exc})") from None
        if not all(map(torch.isfinite, map(torch.tensor, (rule.a, rule.b, rule.reference_lam)))):
            raise ValueError("the stored lambda rule has non-finite coefficients")
        return rule

    @classmethod
    def fit(cls, layer: str, reference_lam: float, r: List[float], best: List[float], lo: float = 0.0,
            hi: float = 10.0) -> "LambdaRule":
        """Least-squares line through the points ``(r_i, best_i)``."""
        if len(r) < 2:
            raise ValueError("fitting a lambda rule needs at least two noise levels")
        rt = torch.tensor(r, dtype=torch.float64)
        bt = torch.tensor(best, dtype=torch.float64)
        design = torch.stack([rt, torch.ones_like(rt)], 1)
        coef = torch.linalg.lstsq(design, bt.unsqueeze(1)).solution.squeeze(1)
        points = [{"r": float(a), "best_lam": float(b)} for a, b in zip(r, best)]
        return cls(layer, float(coef[0]), float(coef[1]), reference_lam, lo, hi, points)

    def lam_for(self, layer_module: CSCConvNd, x: Tensor, differentiable: bool = False) -> Tensor:
        measure = residual_energy if differentiable else reconstruction_error
        r = measure(layer_module, x, self.reference_lam)
        return (self.a * r + self.b).clamp(self.lo, self.hi)

    @contextlib.contextmanager
    def applied(self, model: nn.Module, differentiable: bool = False) -> Iterator[None]:
        """Inside the block, ``model``'s layer ``self.layer`` picks its lambda per input. By default
        lambda(x) is a constant for autograd; ``differentiable`` lets gradients flow through r(x)."""
        module = dict(model.named_modules()).get(self.layer)
        if not isinstance(module, CSCConvNd):
            raise ValueError(f"the lambda rule is for {self.layer!r}, which is not a CSC layer of this model")

        def hook(mod, args, kwargs):
            x = args[0]
            kwargs = dict(kwargs)
            kwargs["lam"] = self.lam_for(mod, x, differentiable)
            return args, kwargs

        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


@dataclass(frozen=True)
class LambdaPolicy:
    """A run's test-time lambda, parsed once and applied the same way by eval and attack.

    ``--lambda`` is ``auto`` (the calibrated rule stored in the model file), a number (the first CSC
    layer) or ``layer=value,...``; ``--lambda-scale`` multiplies the trained lambda of the first CSC
    layer (``layers='first'``) or of every one (``'all'``) not named explicitly. Nothing given: the
    lambdas the model was trained with.
    """

    auto: bool = False
    values: Tuple[Tuple[str, float], ...] = ()  # ("", v) is the first CSC layer
    scale: Optional[float] = None
    layers: str = "first"

    @classmethod
    def parse(cls, lam: Optional[str] = None, scale: Optional[float] = None, layers: str = "first") -> "LambdaPolicy":
        if layers not in ("first", "all"):
            raise ValueError(f"--lambda-layers must be first or all, got {layers!r}")
        if scale is not None and not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"--lambda-scale must be >= 0, got {scale}")
        text = None if lam is None else str(lam).strip()
        if text == "auto":
            if scale is not None:
                raise ValueError("--lambda auto picks lambda per input: it does not combine with --lambda-scale")
            return cls(auto=True, layers=layers)
        values = []
        for part in (text.split(",") if text else []):
            name, _, number = part.rpartition("=")
            try:
                value = float(number)
            except ValueError:
                raise ValueError(f"--lambda must be 'auto', a number, or layer=value pairs, got {lam!r}") from None
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--lambda must be >= 0, got {lam!r}")
            values.append((name.strip(), value))
        return cls(values=tuple(values), scale=scale, layers=layers)

    @property
    def as_trained(self) -> bool:
        return not self.auto and not self.values and self.scale is None

    def resolve(self, model: nn.Module) -> Tuple[Dict[str, float], Optional[LambdaRule]]:
        """The lambda of each CSC layer it changes, and the per-input rule (``auto``)."""
        if self.as_trained:
            return {}, None
        trained = layer_lambdas(model)
        if not trained:
            raise ValueError("this model has no CSC layer: --lambda and --lambda-scale do not apply")
        if self.auto:
            card = getattr(model, "csc_card", None)
            data = card.lambda_rule if card is not None else None
            if data is None:
                raise ValueError("--lambda auto needs a calibrated model: run `csc eval MODEL --calibrate-lambda` "
                                 "and use the MODEL.calibrated.safetensors it writes")
            return {}, LambdaRule.from_dict(data)
        first = next(iter(trained))
        values = {(name or first): value for name, value in self.values}
        unknown = [n for n in values if n not in trained]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a CSC layer of this model (CSC layers: {', '.join(trained)})")
        if self.scale is not None:
            names = list(trained) if self.layers == "all" else [first]
            values.update({n: trained[n] * self.scale for n in names if n not in values})
        return values, None

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[Dict]:
        """Inside the block ``model`` runs with this policy; yields what was applied."""
        trained = layer_lambdas(model)
        values, rule = self.resolve(model)
        with (rule.applied(model) if rule is not None else lambda_override(model, values)):
            yield {**self.describe(values, rule), "trained": trained}

    @staticmethod
    def describe(values: Dict[str, float], rule: Optional[LambdaRule]) -> Dict:
        """What :meth:`resolve` returned, for a result object."""
        return {"mode": "auto" if rule else ("fixed" if values else "as trained"), "values": values,
                "rule": rule.to_dict() if rule else None}
