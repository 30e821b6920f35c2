"""``create_model``: timm's registry with clear errors, recording how a model was built.

Below every module that registers architectures (:mod:`csc_cli.models`, :mod:`csc_cli.autoencoders`)
and used by both to build what they register; :func:`csc_cli.models.rebuild` (which knows every
registered name) builds a model file's architecture through it.
"""

from __future__ import annotations

import difflib
from typing import Any, List

import torch.nn as nn

from .card import ALLOWED_MODEL_KWARGS, ModelCard

__all__ = ["create_model"]


def _suggest(name: str, names: List[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def create_model(arch: str, *, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, **kwargs)`` with clear errors, recording how it was built
    (``model.csc_card``) so that :func:`csc_cli.save` can write a self-describing file."""
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
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub/network failures come in many types
        if pretrained:
            raise RuntimeError(
                f"could not get pretrained weights for {arch!r} ({type(exc).__name__}: {exc}); "
                "without a network, download them elsewhere and pass --weights FILE"
            ) from exc
        raise
    # an autoencoder's class says so (csc_task): the card, and so the file, records the task
    model.csc_card = ModelCard(arch=arch, model_kwargs=dict(kwargs), task=getattr(model, "csc_task", "classifier"))
    return model
