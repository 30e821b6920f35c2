"""Architectures by name: timm's registry, with the build recorded so model files can rebuild it."""

from __future__ import annotations

import difflib
from typing import Any, Dict, List, Optional

import torch.nn as nn

__all__ = ["create_model", "model_spec", "ALLOWED_MODEL_KWARGS"]

#: The timm ``create_model`` keyword arguments a model file may carry, with their types.
ALLOWED_MODEL_KWARGS: Dict[str, type] = {
    "num_classes": int,
    "in_chans": int,
    "drop_rate": float,
    "drop_path_rate": float,
    "global_pool": str,
}


def _suggest(name: str, names: List[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def create_model(arch: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, **kwargs)`` with clear errors, recording how it was built
    (``model.csc_spec``) so that :func:`csc_cli.save` can write a self-describing file."""
    import timm

    unknown = set(kwargs) - set(ALLOWED_MODEL_KWARGS)
    if unknown:
        raise ValueError(f"unsupported model argument(s) {sorted(unknown)}; allowed: {sorted(ALLOWED_MODEL_KWARGS)}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if not timm.is_model(arch):
        raise ValueError(f"unknown architecture {arch!r}{_suggest(arch, timm.list_models())}")
    if "num_classes" in kwargs and int(kwargs["num_classes"]) < 0:
        raise ValueError(f"num_classes must be >= 0, got {kwargs['num_classes']}")
    try:
        model = timm.create_model(arch, pretrained=pretrained, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub/network failures come in many types
        if pretrained:
            raise RuntimeError(
                f"could not get pretrained weights for {arch!r} ({type(exc).__name__}: {exc}); "
                "without a network, download them elsewhere and pass --weights FILE"
            ) from exc
        raise
    model.csc_spec = {"arch": arch, "model_kwargs": dict(kwargs), "reparameterized": False, "identity_modules": []}
    return model


def model_spec(model: nn.Module) -> Dict[str, Any]:
    """How to rebuild ``model``'s architecture: the recorded spec, or one inferred from timm's
    ``pretrained_cfg`` for models created by timm directly."""
    spec: Optional[Dict[str, Any]] = getattr(model, "csc_spec", None)
    if spec is not None:
        return dict(spec)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    arch = cfg.get("architecture")
    if not arch:
        raise ValueError(
            f"cannot tell which architecture this {type(model).__name__} is: build it with "
            "csc_cli.create_model(...) (or timm.create_model) so the model file can rebuild it"
        )
    kwargs: Dict[str, Any] = {}
    if hasattr(model, "num_classes"):
        kwargs["num_classes"] = int(model.num_classes)
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d)) or hasattr(m, "geometry")), None)
    if first is not None and getattr(first, "in_channels", 3) != 3:
        kwargs["in_chans"] = int(first.in_channels)
    return {"arch": arch, "model_kwargs": kwargs, "reparameterized": False, "identity_modules": []}
