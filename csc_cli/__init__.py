"""csc: convolutional sparse coding for real vision models.

Public API::

    from csc_cli import CSCConv2d, CSCConv1d, CSCConvTranspose2d
    layer = CSCConv2d(3, 64, 3, padding=1, lam=0.1, steps=2)   # a drop-in for nn.Conv2d(3, 64, 3, padding=1)
    up = CSCConvTranspose2d(64, 32, 4, stride=2, padding=1)    # a drop-in for nn.ConvTranspose2d (sparse deconvolution)

The names below are imported on first use (PEP 562), so ``import csc_cli`` -- and ``csc --help`` --
do not pay for importing torch and timm; ``from csc_cli import CSCConv2d`` works as always.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "CSC_OPTION_DEFAULTS": ".layers",
    "CSCConv1d": ".layers",
    "CSCConv2d": ".layers",
    "CSCConvNd": ".layers",
    "CSCConvTranspose1d": ".layers",
    "CSCConvTranspose2d": ".layers",
    "csc_layers": ".layers",
    "ConversionPlan": ".convert",
    "convert": ".convert",
    "build_model": ".models",
    "create_model": ".models",
    "ModelCard": ".card",
    "ModelFileError": ".checkpoint",
    "load": ".checkpoint",
    "read_card": ".checkpoint",
    "read_metadata": ".checkpoint",
    "save": ".checkpoint",
    "set_input_normalization": ".surgery",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .card import ModelCard
    from .checkpoint import ModelFileError, load, read_card, read_metadata, save
    from .convert import ConversionPlan, convert
    from .layers import (CSC_OPTION_DEFAULTS, CSCConv1d, CSCConv2d, CSCConvNd, CSCConvTranspose1d,
                         CSCConvTranspose2d, csc_layers)
    from .models import build_model, create_model
    from .surgery import set_input_normalization


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'csc_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """``csc_cli.convert`` is the function, as it was when this file imported everything eagerly:
    importing the submodule of the same name (which binds it on the package) must not replace it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f".{name}" and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
