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
from .layers import CSC_OPTION_DEFAULTS, CSCConvNd, csc_layers
from .metrics import softmax_kl
from .surgery import (applied_weight, conv_kind, csc_layer_for, edit_model, find_convs, replace_module,
                      to_csc_edit)

__all__ = ["ConvPlanEntry", "ConversionPlan", "convert", "find_convs", "replace_module", "csc_layer_for",
           "calibrate_batchnorm", "output_distance", "conversion_report", "code_density", "store_step_sizes",
           "residual_signs"]

_CSC_OPTIONS = set(CSC_OPTION_DEFAULTS)

#: In conv units, a zero-initialised conv's re-initialised atoms get (at most) this norm.
ZERO_ATOM_NORM = 1e-8


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


# ----------------------------------------------------------------------------- signs (nonneg='auto')
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus)
_TRANSPARENT = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.Identity, nn.Dropout,
                nn.Dropout2d, nn.Dropout1d, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._MaxPoolNd, nn.Flatten)


def _norm_act(module: nn.Module) -> bool:
    """timm's norm + activation modules (``BatchNormAct2d``, ``GroupNormAct``...)."""
    return type(module).__name__.endswith("NormAct2d") or type(module).__name__ in ("GroupNormAct", "LayerNormAct")


def _is_activation(module: nn.Module) -> bool:
    if _norm_act(module):
        return not isinstance(getattr(module, "act", None), (nn.Identity, type(None)))
    name = type(module).__name__
    return isinstance(module, _ACTIVATIONS) or name.endswith(("ReLU", "Swish", "GELU", "Sigmoid"))


def _is_transparent(module: nn.Module) -> bool:
    name = type(module).__name__
    return (isinstance(module, _TRANSPARENT) or name in ("DropPath", "LayerScale", "LayerScale2d", "Scale")
            or (_norm_act(module) and not _is_activation(module)))


def residual_signs(model: nn.Module) -> Tuple[Dict[str, Tuple[bool, str]], Optional[str]]:
    """For ``nonneg='auto'``: which convolutions need signed codes, and why.

    Traces ``model`` (``torch.fx``) and follows each conv's output through what keeps its sign
    information (BatchNorm and other norms, dropout, drop-path, identity, pooling, flatten, scaling by
    a constant): a conv whose output reaches an addition or subtraction -- a residual sum -- before
    any activation must be able to subtract from the other operand, so it gets a signed code; one
    followed by an activation (ReLU and the like) keeps the non-negative code, as SDNet's layers.
    Returns ``({conv name: (signed, reason)}, None)``, or ``({}, why)`` when the model cannot be traced
    (then every conv keeps the non-negative code)."""
    import operator

    import torch.fx as fx

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return (conv_kind(m) is not None or _is_activation(m) or _norm_act(m)
                    or super().is_leaf_module(m, qualname))

    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "cannot tell"
        return {}, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'untraceable'}"
    modules = dict(model.named_modules())
    adds = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
    relus = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.gelu,
             torch.nn.functional.silu, torch.sigmoid, torch.tanh, torch.nn.functional.hardswish}
    scalings = {operator.mul, operator.truediv, operator.imul, torch.mul}

    def classify(node) -> Tuple[bool, str]:
        seen, frontier = set(), [(u, []) for u in node.users]
        reasons: List[str] = []
        while frontier:
            user, path = frontier.pop(0)
            if user in seen:
                continue
            seen.add(user)
            here = path + [user.name]
            if user.op == "call_module":
                module = modules.get(user.target)
                if module is not None and _is_transparent(module):
                    frontier += [(u, here) for u in user.users]
                    continue
                what = type(module).__name__ if module is not None else str(user.target)
                reasons.append(f"{what} follows" if module is not None and _is_activation(module) else
                               f"reaches {what} ({user.target})")
                continue
            target = user.target
            if (user.op == "call_function" and target in adds) or (user.op == "call_method" and target in (
                    "add", "add_", "sub", "sub_")):
                through = f"through {', '.join(path)}" if path else "directly"
                return True, f"signed: reaches the residual sum {user.name} {through}, before any activation"
            if (user.op == "call_function" and target in relus) or (user.op == "call_method" and target in (
                    "relu", "relu_")):
                reasons.append(f"{getattr(target, '__name__', target)} follows")
                continue
            if (user.op == "call_function" and target in scalings) or user.op == "call_method" and target in (
                    "flatten", "view", "reshape", "contiguous", "mul", "mul_", "div", "div_"):
                frontier += [(u, here) for u in user.users]
                continue
            reasons.append(f"reaches {user.name}")
        why = "; ".join(dict.fromkeys(reasons)) or "its output is unused"
        return False, f"non-negative: {why}"

    signs: Dict[str, Tuple[bool, str]] = {}
    for node in graph.nodes:
        if node.op == "call_module" and conv_kind(modules.get(node.target, nn.Module())) is not None:
            signs[str(node.target)] = classify(node)
    return signs, None


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
        why_not, why = "", "layers='all'"
    elif layers == "stem":
        chosen = {convertible[0][0]} if convertible else set()
        why_not, why = "not the stem (the first convolution)", "the stem (the first convolution)"
    else:
        patterns = _as_list(layers)
        chosen = {n for n, _, _ in convertible if _matches(n, patterns)}
        if not chosen:
            raise ValueError(f"layers {patterns} match no convolution (names look like {convertible[0][0]!r})"
                             if convertible else "the model has no convolution to convert")
        why_not, why = f"not matched by {patterns}", f"matched by {patterns}"
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
            reasons[name] = "+" + why  # chosen, and why
    for pattern in include:
        if not any(_matches(n, [pattern]) for n, _, _ in convertible):
            raise ValueError(f"include pattern {pattern!r} matches no convolution")
    return reasons


def _chosen(reason: str) -> bool:
    return reason.startswith("+")


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
    input_size: Optional[Sequence[int]] = None,
    **csc_options: Any,
) -> Tuple[nn.Module, ConversionPlan]:
    """Replace the chosen convolutions of ``model`` (in place) by CSC layers.

    The CSC layers answer in the units of the convs they replace (``units='conv'``: the code times
    ``||atom_m|| / t`` per channel), so that what follows them -- a BatchNorm's running statistics,
    an activation, a residual sum -- sees the scale it was trained on: with ``steps=1, lam=0,
    nonneg=False`` the converted model computes exactly the original function. Pass
    ``units='code'`` for layers that return the bare sparse code (as SDNet's do).

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
        input_size: ``(C, H, W)`` of the model's input: every new layer's step size is estimated
            (to convergence) and stored at the size its input has then, so the model file holds it.
        csc_options: the CSC layers' options (``lam``, ``steps``, ``nonneg``, ``units``...);
            ``nonneg='auto'`` gives signed codes to the convs whose output reaches a residual sum
            before any activation and non-negative codes to the rest (:func:`residual_signs`; the
            plan's reason says which and why).

    Returns ``(model, plan)``. Converting a converted model again changes nothing.
    """
    unknown = set(csc_options) - _CSC_OPTIONS
    if unknown:
        raise ValueError(f"unknown CSC option(s) {sorted(unknown)}; valid: {sorted(_CSC_OPTIONS)}")
    csc_options = {"units": "conv", **csc_options}
    notes: List[str] = []
    auto_sign = csc_options.get("nonneg") == "auto"
    if auto_sign:
        csc_options["nonneg"] = True
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
    signs: Dict[str, Tuple[bool, str]] = {}
    if auto_sign:
        signs, untraceable = residual_signs(model)
        if untraceable:
            notes.append(f"nonneg='auto': the model could not be traced ({untraceable}); every code is non-negative")
    entries: List[ConvPlanEntry] = []
    new_layers = []
    for name, module, kind, aliases in convs:
        if kind == "csc":
            entries.append(_entry(name, module, "keep", "already a CSC layer", aliases))
        elif kind.startswith("!"):
            entries.append(_entry(name, module, "skip", kind[1:], aliases))
        elif not _chosen(reasons[name]):
            entries.append(_entry(name, module, "skip", reasons[name], aliases))
        else:
            notes_here = [reasons[name][1:]]
            if kind in ("std", "std_same"):
                notes_here.append("dictionary = the standardised weight")
            elif kind == "same":
                notes_here.append("TF 'SAME' padding, resolved per input size")
            elif kind == "conv_t":
                notes_here.append("transposed: sparse deconvolution")
            options = csc_options
            if auto_sign:
                signed, why = next((signs[n] for n in (name, *aliases) if n in signs),
                                   (False, "non-negative: not found in the traced graph"))
                notes_here.append(why)
                options = {**csc_options, "nonneg": not signed}
            zero = not bool(_dictionary(module, kind).any())  # e.g. a zero-initialised gain
            if zero:
                # a zero dictionary has no atoms: its codes are 0 and, through the threshold, so
                # are its gradients -- it would stay dead forever (timm zero-inits some last convs).
                # In conv units the output is homogeneous of degree 1 in the weight: atoms at a
                # tiny norm keep the output ~0 (the original's) with gradients of full size.
                notes_here.append("all-zero weight (zero-initialised): atoms re-initialised" +
                                  (f" at norm {ZERO_ATOM_NORM:g}, output ~0" if csc_options["units"] == "conv" else ""))
            entries.append(_entry(name, module, "replace", "; ".join(notes_here), aliases))
            if not dry_run:
                layer = edit_model(model, to_csc_edit(module, name, aliases, **options))
                if zero:
                    with torch.no_grad():
                        nn.init.kaiming_uniform_(layer.weight, a=5 ** 0.5)
                        if layer.units == "conv":
                            norms = layer.geometry.atom_norms(layer.weight)
                            layer.weight.mul_(ZERO_ATOM_NORM / norms.max())
                new_layers.append(layer)
    if new_layers and input_size is not None:
        store_step_sizes(model, input_size, new_layers)
    return model, ConversionPlan(entries=entries, reparameterized=reparam, notes=notes)


@torch.no_grad()
def store_step_sizes(model: nn.Module, input_size: Sequence[int], layers: Optional[Sequence[CSCConvNd]] = None) -> int:
    """Estimate (to convergence) and store the step size of each CSC layer of ``model`` (or of
    ``layers``) at the size its input has when ``model`` runs on one ``input_size`` (C, H, W) input.
    Runs one eval forward on zeros; the model's state is otherwise unchanged. Returns how many."""
    targets = {id(m) for m in (layers if layers is not None else csc_layers(model).values())}
    done = set()
    handles = []

    def pre_hook(layer, args, kwargs):
        if id(layer) in targets and id(layer) not in done:
            x = args[0]
            out_size = kwargs.get("output_size", args[1] if len(args) > 1 and layer.transposed else None)
            spatial = layer._spatial_output_size(x, out_size)
            layer.refresh_step_size(tuple(x.shape[-layer._dim:]), output_size=spatial)
            done.add(id(layer))

    for module in model.modules():
        if isinstance(module, CSCConvNd) and id(module) in targets:
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
    reference = next(iter(model.parameters()), None)
    factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *[int(v) for v in input_size], **factory))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return len(done)


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
    return _compare(_eval_forward(reference, images), _eval_forward(candidate, images))


def _eval_forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return model(images)
    finally:
        model.train(was_training)


def _compare(p: torch.Tensor, q: torch.Tensor) -> Dict[str, Any]:
    p, q = p.float(), q.float()
    if p.shape != q.shape:
        raise ValueError(f"output shapes differ: {tuple(p.shape)} vs {tuple(q.shape)}")
    kl = softmax_kl(p.flatten(1), q.flatten(1))
    agree = (p.flatten(1).argmax(1) == q.flatten(1).argmax(1)).float().mean()
    return {"top1_agreement": float(agree), "kl": float(kl), "images": int(p.shape[0])}


#: A model "predicts one class" when its most frequent prediction takes at least this share of images.
ONE_CLASS_SHARE = 0.9
#: ... and its predictions are near-uniform when their mean entropy is at least this share of log(classes).
UNIFORM_ENTROPY = 0.98


def _prediction_summary(logits: torch.Tensor, labels: Optional[torch.Tensor]) -> Dict[str, Any]:
    logp = torch.log_softmax(logits.flatten(1).float(), dim=1)
    pred = logp.argmax(1)
    counts = torch.bincount(pred, minlength=logp.shape[1])
    summary: Dict[str, Any] = {
        "entropy": float(-(logp.exp() * logp).sum(1).mean()),  # mean prediction entropy, nats
        "max_entropy": float(torch.log(torch.tensor(float(logp.shape[1])))),
        "distinct_predictions": int((counts > 0).sum()),
        "top_class": int(counts.argmax()),
        "top_class_share": float(counts.max()) / max(1, int(pred.numel())),
    }
    if labels is not None:
        summary["accuracy"] = float((pred.cpu() == labels.cpu()).float().mean())
    return summary


@torch.no_grad()
def code_density(model: nn.Module, images: torch.Tensor) -> Dict[str, float]:
    """Per CSC layer of ``model`` (eval mode, on ``images``): the fraction of non-zero code entries."""
    return _forward_with_density(model, images)[1]


def _forward_with_density(model: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
    layers = csc_layers(model)
    counts: Dict[str, List[float]] = {n: [0.0, 0.0] for n in layers}
    handles = []
    for name, layer in layers.items():
        def hook(mod, inputs, output, name=name):
            z = mod.code_from_output(output, inputs[0].shape[-mod._dim:])
            counts[name][0] += float((z != 0).sum())
            counts[name][1] += float(z.numel())
        handles.append(layer.register_forward_hook(hook))
    try:
        logits = _eval_forward(model, images)
    finally:
        for h in handles:
            h.remove()
    return logits, {n: (c[0] / c[1] if c[1] else 0.0) for n, c in counts.items()}


@torch.no_grad()
def conversion_report(reference: nn.Module, candidate: nn.Module, images: torch.Tensor,
                      labels: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    """What a conversion did to the function, with what makes the figures meaningful.

    ``{top1_agreement, kl, images, source, converted, layers, dead_layers, warnings}``: agreement
    and KL as :func:`output_distance`; for each model its mean prediction entropy, how many distinct
    classes it predicts and the share of the most frequent one (and its accuracy, with ``labels``);
    per CSC layer of ``candidate`` the fraction of non-zero codes. Warnings (one line each, with what
    to do) when either model predicts (almost) one class -- agreement then says little -- and for
    every dead layer (no non-zero code on any image)."""
    ref_logits = _eval_forward(reference, images)
    cand_logits, density = _forward_with_density(candidate, images)
    distance = _compare(ref_logits, cand_logits)
    source, converted = _prediction_summary(ref_logits, labels), _prediction_summary(cand_logits, labels)
    dead = [n for n, d in density.items() if d == 0.0]
    warnings: List[str] = []
    n = int(images.shape[0])
    for who, summary in (("the source model", source), ("the converted model", converted)):
        if n >= 2 and summary["top_class_share"] >= ONE_CLASS_SHARE:
            warnings.append(
                f"{who} predicts class {summary['top_class']} for {summary['top_class_share']:.0%} of the {n} "
                "images: the agreement figure says little (untrained weights, or a dead layer?)")
        elif summary["entropy"] >= UNIFORM_ENTROPY * summary["max_entropy"] > 0:
            warnings.append(
                f"{who}'s predictions are near-uniform (entropy {summary['entropy']:.3f} of at most "
                f"{summary['max_entropy']:.3f} nats): the agreement figure says little (untrained weights?)")
    if dead:
        shown = ", ".join(dead[:4]) + (f" and {len(dead) - 4} more" if len(dead) > 4 else "")
        warnings.append(f"{len(dead)} of {len(density)} CSC layers output no non-zero code on these images ({shown}): "
                        "lower their lambda (--lambda) or re-estimate the BatchNorms (--calibrate-bn N)")
    return {**distance, "source": source, "converted": converted, "layers": density, "dead_layers": dead,
            "warnings": warnings}
