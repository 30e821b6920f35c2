"""The one surgery engine: every change that turns a timm backbone into a csc model is an
:class:`~csc_cli.card.Edit`, applied by :func:`apply_edit` -- when :func:`csc_cli.build_model` or
:func:`csc_cli.convert` makes it (:func:`edit_model`, which also logs it in the model's card) and
when :func:`csc_cli.load` replays a file's edit log (:func:`csc_cli.models.rebuild`).

Also here: what counts as a convolution (:func:`conv_kind`, :func:`find_convs`), the weight a
conv applies (:func:`applied_weight`), the one conv -> CSC constructor (:func:`csc_layer_for`),
the model's card (:func:`card_of`) and its input normalisation (:func:`set_input_normalization`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .card import CardError, DataContract, Edit, ModelCard
from .layers import CSC_OPTION_DEFAULTS, LAYER_CLASSES, CSCConvNd, csc_class_for

__all__ = ["apply_edit", "edit_model", "card_of", "conv_kind", "find_convs", "applied_weight", "csc_layer_for",
           "conv_geometry", "replace_module", "sync_card", "set_input_normalization", "InputNormalization"]


# ----------------------------------------------------------------------------- discovery
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


# ----------------------------------------------------------------------------- conv -> CSC
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
