"""Turn the convolutions of any ``nn.Module`` into CSC layers: find, plan, replace, report.

``convert(model, layers='all', **csc_options) -> (model, plan)`` replaces each chosen convolution in
place by a :class:`~csc_cli.layers.CSCConv2d` (or ``CSCConv1d``; ``CSCConvTranspose2d``/``1d`` for a
transposed convolution) of the same geometry whose dictionary is the conv's weight, so the model
class, its API (timm's ``forward_features``, ``forward_head``, ``reset_classifier``,
``pretrained_cfg``...), dtype, device and memory format are unchanged. The plan lists every
convolution found, with its geometry, the action taken and, for each one skipped, why.

Understood convolutions: ``nn.Conv1d``/``nn.Conv2d`` with any stride, padding, dilation, groups and
padding mode; ``nn.ConvTranspose1d``/``nn.ConvTranspose2d`` (sparse deconvolution: the code lives on
the transposed conv's output grid; ``forward(x, output_size)`` works as before); timm's
``Conv2dSame`` (TF 'SAME' padding computed per input size), ``StdConv2d``, ``StdConv2dSame``,
``ScaledStdConv2d``, ``ScaledStdConv2dSame`` (the dictionary is the standardised weight). Composite
convolutions (``MixedConv2d``, separable convs) are converted through their child convolutions.
What cannot be a fixed dictionary (``CondConv2d``'s per-sample kernels, 3-D convolutions, convs
with an unknown custom forward) is skipped with a reason, never silently.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .card import Edit
from .layers import CSC_OPTION_DEFAULTS
from .surgery import (applied_weight, conv_kind, csc_layer_for, edit_model, find_convs, replace_module,
                      to_csc_edit)

__all__ = ["ConvPlanEntry", "ConversionPlan", "convert", "find_convs", "replace_module", "csc_layer_for"]

_CSC_OPTIONS = set(CSC_OPTION_DEFAULTS)


@dataclass
class ConvPlanEntry:
    """One convolution found in the model."""

    name: str
    kind: str  # class name
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Any
    dilation: Tuple[int, ...]
    groups: int
    padding_mode: str
    action: str  # 'replace', 'skip' or 'keep' (already a CSC layer)
    reason: str = ""
    aliases: List[str] = field(default_factory=list)  # other names of the same (shared) module

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels


@dataclass
class ConversionPlan:
    """Every convolution found, what was (or would be) done with it, and why."""

    entries: List[ConvPlanEntry]
    reparameterized: bool = False
    notes: List[str] = field(default_factory=list)

    @property
    def replaced(self) -> List[ConvPlanEntry]:
        return [e for e in self.entries if e.action == "replace"]

    @property
    def skipped(self) -> List[ConvPlanEntry]:
        return [e for e in self.entries if e.action == "skip"]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "reparameterized": self.reparameterized,
            "notes": list(self.notes),
            "counts": {a: sum(e.action == a for e in self.entries) for a in ("replace", "skip", "keep")},
            "entries": [asdict(e) for e in self.entries],
        }


# ----------------------------------------------------------------------------- discovery
_conv_kind = conv_kind  # the names before the surgery engine had its own module
_dictionary = applied_weight


def _entry(name: str, module: nn.Module, action: str, reason: str, aliases: List[str]) -> ConvPlanEntry:
    tf_same = _conv_kind(module) in ("same",) or getattr(module, "same_pad", False)
    return ConvPlanEntry(
        name=name,
        kind=type(module).__name__,
        in_channels=module.in_channels,
        out_channels=module.out_channels,
        kernel_size=tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding="tf_same" if tf_same else (module.padding if isinstance(module.padding, str) else tuple(module.padding)),
        dilation=tuple(module.dilation),
        groups=module.groups,
        padding_mode=getattr(module, "padding_mode", "zeros"),
        action=action,
        reason=reason,
        aliases=list(aliases),
    )


# ----------------------------------------------------------------------------- selection
def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _as_list(value: Union[None, str, Sequence[str]]) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _select(
    convs: List[Tuple[str, nn.Module, str, List[str]]],
    layers: Union[str, Sequence[str]],
    include: Sequence[str],
    exclude: Sequence[str],
    kernel_sizes: Optional[Sequence[int]],
    depthwise: Optional[bool],
) -> Dict[str, str]:
    """Map each convertible conv name to '' (chosen) or the reason it was not chosen."""
    convertible = [(n, m, k) for n, m, k, _ in convs if not k.startswith("!") and k != "csc"]
    if layers == "all":
        chosen = {n for n, _, _ in convertible}
        why_not = ""
    elif layers == "stem":
        chosen = {convertible[0][0]} if convertible else set()
        why_not = "not the stem (the first convolution)"
    else:
        patterns = _as_list(layers)
        chosen = {n for n, _, _ in convertible if _matches(n, patterns)}
        if not chosen:
            raise ValueError(f"layers {patterns} match no convolution (names look like {convertible[0][0]!r})"
                             if convertible else "the model has no convolution to convert")
        why_not = f"not matched by {patterns}"
    reasons: Dict[str, str] = {}
    for name, module, _ in convertible:
        if name not in chosen:
            reasons[name] = why_not
        elif include and not _matches(name, include):
            reasons[name] = f"not in include {list(include)}"
        elif exclude and _matches(name, exclude):
            reasons[name] = f"excluded by {list(exclude)}"
        elif kernel_sizes is not None and not all(k in kernel_sizes for k in module.kernel_size):
            reasons[name] = f"kernel size {tuple(module.kernel_size)} not in {sorted(kernel_sizes)}"
        elif depthwise is not None and (module.groups > 1 and module.groups == module.in_channels) != depthwise:
            reasons[name] = "depthwise" if not depthwise else "not depthwise"
        else:
            reasons[name] = ""
    for pattern in include:
        if not any(_matches(n, [pattern]) for n, _, _ in convertible):
            raise ValueError(f"include pattern {pattern!r} matches no convolution")
    return reasons


def _has_reparameterizable(model: nn.Module) -> bool:
    return any(hasattr(m, a) for m in model.modules() if m is not model
               for a in ("fuse", "reparameterize", "switch_to_deploy"))


def convert(
    model: nn.Module,
    layers: Union[str, Sequence[str]] = "all",
    *,
    include: Union[None, str, Sequence[str]] = None,
    exclude: Union[None, str, Sequence[str]] = None,
    kernel_sizes: Optional[Sequence[int]] = None,
    depthwise: Optional[bool] = None,
    reparameterize: Union[bool, str] = "auto",
    dry_run: bool = False,
    **csc_options: Any,
) -> Tuple[nn.Module, ConversionPlan]:
    """Replace the chosen convolutions of ``model`` (in place) by CSC layers.

    Args:
        layers: ``'all'``, ``'stem'`` (the first convolution, in registration order -- the input
            path's first conv in timm and torchvision models), or glob pattern(s) on module names.
        include / exclude: further glob filters on module names.
        kernel_sizes: only convs whose kernel sizes are all in this set (e.g. ``[3]``).
        depthwise: ``True`` only depthwise convs, ``False`` no depthwise convs, ``None`` both.
        reparameterize: models with branches that fuse at inference (RepVGG, MobileOne, FastViT)
            are fused first with timm's ``reparameterize_model`` when ``'auto'``/``True``; ``False``
            refuses them.
        dry_run: plan only, change nothing.
        csc_options: the CSC layers' options (``lam``, ``steps``, ``nonneg``, ...).

    Returns ``(model, plan)``. Converting a converted model again changes nothing.
    """
    unknown = set(csc_options) - _CSC_OPTIONS
    if unknown:
        raise ValueError(f"unknown CSC option(s) {sorted(unknown)}; valid: {sorted(_CSC_OPTIONS)}")
    notes: List[str] = []
    reparam = False
    if _has_reparameterizable(model):
        if reparameterize is False:
            raise ValueError("this model has re-parameterisable branches (RepVGG/MobileOne style): "
                             "fuse them first (reparameterize='auto') or convert another model")
        if not dry_run:
            edit_model(model, Edit("reparameterize"))
            reparam = True
            notes.append("re-parameterisable branches fused first (timm reparameterize_model)")
        else:
            notes.append("re-parameterisable branches would be fused first (timm reparameterize_model)")
    convs = find_convs(model)
    if not convs:
        raise ValueError("the model has no convolution to convert")
    reasons = _select(convs, layers, _as_list(include), _as_list(exclude), kernel_sizes, depthwise)
    entries: List[ConvPlanEntry] = []
    for name, module, kind, aliases in convs:
        if kind == "csc":
            entries.append(_entry(name, module, "keep", "already a CSC layer", aliases))
        elif kind.startswith("!"):
            entries.append(_entry(name, module, "skip", kind[1:], aliases))
        elif reasons[name]:
            entries.append(_entry(name, module, "skip", reasons[name], aliases))
        else:
            entry = _entry(name, module, "replace", "", aliases)
            notes_here = []
            if kind in ("std", "std_same"):
                notes_here.append("dictionary = the standardised weight")
            elif kind == "same":
                notes_here.append("TF 'SAME' padding, resolved per input size")
            zero = not bool(_dictionary(module, kind).any())  # e.g. a zero-initialised gain
            if zero:
                # a zero dictionary has no atoms: its codes are 0 and, through the threshold, so
                # are its gradients -- it would stay dead forever (timm zero-inits some last convs)
                notes_here.append("all-zero weight (zero-initialised): atoms re-initialised")
            entry.reason = "; ".join(notes_here)
            entries.append(entry)
            if not dry_run:
                layer = edit_model(model, to_csc_edit(module, name, aliases, **csc_options))
                if zero:
                    with torch.no_grad():
                        nn.init.kaiming_uniform_(layer.weight, a=5 ** 0.5)
    return model, ConversionPlan(entries=entries, reparameterized=reparam, notes=notes)


# ----------------------------------------------------------------------------- after conversion
@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> int:
    """Re-estimate every BatchNorm's running statistics on ``images`` (already normalised) as an
    exact average over them (momentum None), leaving the model in the mode it was in. Returns the
    number of BatchNorm layers reset."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over all batches seen
    model.train()
    try:
        for start in range(0, images.shape[0], batch_size):
            model(images[start : start + batch_size])
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


@torch.no_grad()
def output_distance(reference: nn.Module, candidate: nn.Module, images: torch.Tensor) -> Dict[str, float]:
    """How far ``candidate``'s predictions are from ``reference``'s on ``images`` (both in eval
    mode): top-1 agreement and the mean KL(reference || candidate) of the softmax outputs."""
    ref_mode, cand_mode = reference.training, candidate.training
    reference.eval()
    candidate.eval()
    try:
        p = reference(images).float()
        q = candidate(images).float()
    finally:
        reference.train(ref_mode)
        candidate.train(cand_mode)
    if p.shape != q.shape:
        raise ValueError(f"output shapes differ: {tuple(p.shape)} vs {tuple(q.shape)}")
    logp = torch.log_softmax(p.flatten(1), dim=1)
    logq = torch.log_softmax(q.flatten(1), dim=1)
    kl = (logp.exp() * (logp - logq)).sum(dim=1).mean()
    agree = (p.flatten(1).argmax(1) == q.flatten(1).argmax(1)).float().mean()
    return {"top1_agreement": float(agree), "kl": float(kl), "images": int(images.shape[0])}
