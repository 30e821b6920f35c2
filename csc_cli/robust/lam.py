"""Test-time lambda: change it per layer, or choose it per input with a calibrated rule.

SDNet's robustness claim: raising the first CSC layer's lambda at test time recovers stable codes
from noisy inputs. :func:`lambda_override` sets lambdas for a block of code and restores them;
:class:`LambdaPolicy` is what ``--lambda`` / ``--lambda-scale`` mean, for eval and attack alike; the
label-free per-input rules (``--lambda auto``) are in :mod:`csc_cli.robust.rules`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch.nn as nn

from ..layers import CSCConvNd, csc_layers
from .rules import LambdaRule, reconstruction_error, residual_energy, rule_from_dict  # noqa: F401 (re-export)


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
            return {}, rule_from_dict(data)
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
