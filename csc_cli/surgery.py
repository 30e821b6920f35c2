"""The one surgery engine: every change that turns a timm backbone into a csc model is an
:class:`~csc_cli.card.Edit`, applied by :func:`apply_edit` -- when :func:`csc_cli.build_model` or
:func:`csc_cli.convert` makes it (:func:`edit_model`, which also logs it in the model's card) and
when :func:`csc_cli.load` replays a file's edit log (:func:`csc_cli.models.rebuild`).

Also here: finding a model's convolutions (:func:`find_convs`), the model's card (:func:`card_of`)
and its input normalisation (:func:`set_input_normalization`). What counts as a convolution
(:func:`~csc_cli.layers.conv_kind`) and the one conv -> CSC constructor
(:func:`~csc_cli.layers.csc_layer_for`) belong to :mod:`csc_cli.layers` (``CSCConv2d.from_conv`` is
that constructor); they are re-exported here for the surgery code that uses them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .card import CardError, DataContract, Edit, ModelCard
from .continuation import current as current_path
from .layers import (LAYER_CLASSES, CSCConvNd, applied_weight, conv_geometry, conv_kind, convertible,
                     csc_class_for, csc_layer_for)

__all__ = ["apply_edit", "edit_model", "card_of", "conv_kind", "find_convs", "applied_weight", "csc_layer_for",
           "conv_geometry", "replace_module", "sync_card", "set_input_normalization", "InputNormalization"]


# ----------------------------------------------------------------------------- discovery
def find_convs(model: nn.Module) -> List[Tuple[str, nn.Module, str, List[str]]]:
    """``(name, module, kind, aliases)`` for every convolution-like module, in registration order.
    A module registered under several names (shared weights) appears once, with its other names."""
    seen: Dict[int, int] = {}
    found: List[Tuple[str, nn.Module, str, List[str]]] = []
    for name, module in model.named_modules(remove_duplicate=False):
        kind = conv_kind(module)
        if kind is None:
            continue
        if id(module) in seen:
            found[seen[id(module)]][3].append(name)
            continue
        seen[id(module)] = len(found)
        found.append((name, module, kind, []))
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule at dotted ``name`` to ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# ----------------------------------------------------------------------------- the card on a model
def card_of(model: nn.Module) -> ModelCard:
    """``model``'s card (``model.csc_card``): the recorded one, or one inferred from timm's
    ``pretrained_cfg`` for a model timm built directly (attached to the model from then on)."""
    card = getattr(model, "csc_card", None)
    if isinstance(card, ModelCard):
        return card
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
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, CSCConvNd))), None)
    if first is not None and getattr(first, "in_channels", 3) != 3:
        kwargs["in_chans"] = int(first.in_channels)
    card = ModelCard(arch=arch, model_kwargs=kwargs)
    model.csc_card = card
    return card


# ----------------------------------------------------------------------------- edits
def _fail(edit: Edit, message: str) -> None:
    raise ValueError(f"edit {edit.op} {edit.target!r}: {message}" if edit.target else f"edit {edit.op}: {message}")


def _module_at(model: nn.Module, edit: Edit) -> nn.Module:
    try:
        return model.get_submodule(edit.target)
    except AttributeError:
        _fail(edit, "no such module in the model")


def apply_edit(model: nn.Module, edit: Edit) -> Optional[nn.Module]:
    """Apply one edit to ``model`` in place; returns the module it put in (if any). The only code
    that performs model surgery: builders, :func:`csc_cli.convert` and model loading call it."""
    if edit.op == "reparameterize":
        from timm.utils.model import reparameterize_model

        reparameterize_model(model, inplace=True)
        return None
    module = _module_at(model, edit)
    if edit.op == "identity":
        new: nn.Module = nn.Identity()
    elif edit.op == "to_csc":
        kind = conv_kind(module)
        if not convertible(kind):
            _fail(edit, f"{type(module).__name__} is not a convertible convolution")
        if edit.geometry is not None and conv_geometry(module, kind) != edit.geometry:
            _fail(edit, "the convolution's geometry is not the recorded one")
        if edit.layer and LAYER_CLASSES[edit.layer] is not csc_class_for(module):
            _fail(edit, f"a {type(module).__name__} does not become a {edit.layer}")
        new = csc_layer_for(module, kind, **(edit.options or {}))
    elif edit.op == "new_csc":
        reference = next(iter(module.parameters()), None) or next(iter(model.parameters()), None)
        factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
        try:
            new = LAYER_CLASSES[edit.layer].from_record(edit.geometry, edit.options or {}, **factory)
        except (KeyError, TypeError, ValueError) as exc:
            _fail(edit, f"bad layer record ({exc})")
    else:  # pragma: no cover - Edit.from_dict validates ops
        _fail(edit, "unknown operation")
    for path in [edit.target, *edit.aliases]:
        replace_module(model, path, new)
    return new


def edit_model(model: nn.Module, edit: Edit) -> Optional[nn.Module]:
    """Apply ``edit`` and log it in the model's card (so a saved file replays it). A module that
    is no named architecture (no card) is edited all the same; it cannot be saved by name."""
    try:
        card: Optional[ModelCard] = card_of(model)
    except ValueError:
        card = None
    new = apply_edit(model, edit)
    if card is not None:
        card.edits.append(edit)
    return new


def to_csc_edit(module: nn.Module, name: str, aliases: Sequence[str] = (), **options: Any) -> Edit:
    kind = conv_kind(module)
    layer = csc_class_for(module).__name__
    return Edit("to_csc", name, list(aliases), layer, conv_geometry(module, kind), dict(options))


def sync_card(model: nn.Module) -> ModelCard:
    """The card of ``model`` as it is now: every CSC layer's options and geometry as the layers
    hold them (``layer.lam = 0.3`` after conversion is saved), and a ``new_csc`` edit for a CSC
    layer put in by hand (outside the edit log). Raises when a logged edit no longer matches."""
    card = card_of(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    covered = set()
    edits: List[Edit] = []
    for edit in card.edits:
        if edit.op in ("to_csc", "new_csc"):
            layer = modules.get(edit.target)
            if not isinstance(layer, CSCConvNd):
                # replaced again later (e.g. by hand): the log would no longer rebuild this model
                raise ValueError(f"{edit.target!r} was made a CSC layer but is now a "
                                 f"{type(layer).__name__}: rebuild the model with build_model/convert")
            edit = Edit(edit.op, edit.target, list(edit.aliases), type(layer).__name__,
                        layer.geometry_record() if edit.op == "new_csc" else edit.geometry, layer.csc_options())
            covered.update(id(modules[n]) for n in [edit.target, *edit.aliases] if n in modules)
        edits.append(edit)
    first_name: Dict[int, Edit] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, CSCConvNd) or id(module) in covered:
            continue
        if id(module) in first_name:
            first_name[id(module)].aliases.append(name)
            continue
        edit = Edit("new_csc", name, [], type(module).__name__, module.geometry_record(), module.csc_options())
        first_name[id(module)] = edit
        edits.append(edit)
    card.edits = edits
    on_path = current_path(model)
    card.continuation = None if on_path is None else on_path[0].record(on_path[1])
    return card


# ----------------------------------------------------------------------------- input normalisation
class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel, applied to the model's input by a forward pre-hook (see
    :func:`set_input_normalization`). Its buffers are not saved: the card holds mean and std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.to(x.dtype).view(shape)) / self.std.to(x.dtype).view(shape)

    def extra_repr(self) -> str:
        return f"mean={[round(float(v), 4) for v in self.mean.flatten()]}, std={[round(float(v), 4) for v in self.std.flatten()]}"


def _normalize_input(model: nn.Module, args: Tuple[Any, ...]):
    norm = model._modules.get("csc_input")
    if norm is None or not args:
        return None
    return (norm(args[0]), *args[1:])


def set_input_normalization(model: nn.Module, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> nn.Module:
    """Make ``model(x)`` take images in [0, 1]: its input is normalised by ``mean`` / ``std`` first
    (``None`` removes the normalisation). Recorded in the card's data contract; idempotent."""
    card = card_of(model)
    if mean is None:
        model._modules.pop("csc_input", None)
        card.data = DataContract(**{**card.data.to_dict(), "mean": None, "std": None})
        return model
    reference = next(iter(model.parameters()), None)
    norm = InputNormalization(mean, std)
    if reference is not None:
        norm = norm.to(reference.device)
    model.csc_input = norm
    if _normalize_input not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_normalize_input)
    card.data = DataContract(**{**card.data.to_dict(), "mean": list(mean), "std": list(std)})
    return model


def input_normalization(model: nn.Module) -> Optional[InputNormalization]:
    """The model's own input normalisation, if it has one."""
    return model._modules.get("csc_input")


__all__ += ["input_normalization", "to_csc_edit", "convertible", "CardError"]
