"""ONNX export: a csc model as an ONNX graph, with the test-time lambda an input and the label-free
lambda rule inside the graph.

The graph is *traced* -- ``torch.export`` (non-strict), then ``torch.onnx``'s dynamo exporter --
from the code ``csc eval`` runs: the model's forward with its input normalisation (a forward
pre-hook, so the graph takes images in [0, 1]), the one solver core (:mod:`csc_cli.core.lasso`)
and, with ``lam='auto'``, the stored rule's own :meth:`~csc_cli.robust.rules.LambdaRule.applied`
hooks. Nothing here re-implements a CSC layer or a rule.

What a graph takes and gives (fp32, dynamic batch ``N``):

=================  ===========================  ==========================================
part               inputs                       outputs
=================  ===========================  ==========================================
classifier         ``images`` [N, C, H, W]      ``logits`` [N, classes]
encoder            ``images`` [N, C, H, W]      ``features`` [N, d] (unit norm)
decoder            ``features`` [N, d]          ``images`` [N, C, H, W]
both               ``images`` [N, C, H, W]      ``features``, ``reconstruction``
=================  ===========================  ==========================================

Images are in [0, 1], as csc reads them. Test-time lambda:

* ``lam='input'`` (default): an input ``lambda`` of shape [1] (one value for the batch) or [N] (one
  per image) sets the lambda of the layers ``csc eval --lambda X`` changes -- a classifier's first CSC
  layer, every encoder CSC layer of an autoencoder, a decoder's first CSC layer -- or, with
  ``lambda_inputs='each'``, one input ``lambda.LAYER`` per CSC layer. Each is an ONNX graph input
  that is also an initializer holding the trained value: onnxruntime uses that value when the input
  is not fed (it lists such inputs under ``get_overridable_initializers()``, not ``get_inputs()``).
* ``lam='auto'``: the rule stored in the model card (``csc eval --calibrate-lambda``) picks each
  image's lambda inside the graph, as ``csc eval --lambda auto`` does; an extra output ``lambda``
  [N] says which. Where a rule cannot be written in ONNX operators the export falls back to the
  lambda input and says so in one line (:attr:`ExportSpec.notes`).

The step size of every CSC layer is a constant of the graph: ``t = step_scale / L`` at the layer's
input size at the export size -- the stored (trained) estimate at the model's own size, the
estimate ``csc eval`` computes at another (:meth:`csc_cli.step_size.StepSizeState.pin`, on a copy of
the model). Hence a fixed spatial size: the step belongs to it.

Two torch functions that ONNX's function library cannot translate are traced as operators whose
values are identical (:data:`_EQUIVALENTS`): ``median`` along a dimension (the noise estimate of the
sigma rules: the lower middle of a sort) and ``searchsorted`` (the sigma table: a count of knots
below the value).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .autoencoders import is_autoencoder
from .layers import csc_layers
from .robust.lam import lambda_override
from .robust.rules import LambdaRule, rule_from_dict
from .surgery import card_of, input_normalization

__all__ = ["export_onnx", "ExportSpec", "GraphPort", "onnx_session", "run_onnx", "csc_outputs", "PARTS",
           "LAMBDA_MODES", "LAMBDA_INPUTS", "EXTRA_HINT", "compare"]

PARTS = ("encoder", "decoder", "both")  # of an autoencoder; a classifier is exported whole
LAMBDA_MODES = ("input", "auto")
LAMBDA_INPUTS = ("one", "each")
EXTRA_HINT = "install the export extra: pip install 'csc-cli[export]' (onnx, onnxruntime, onnxscript)"
_EXAMPLE_BATCH = 2  # traced with 2 images: a batch of 1 would let torch.export specialise N = 1
_PER_IMAGE = "__per_image"  # suffix of the traced per-image lambda inputs (see _lambda_defaults)


# ----------------------------------------------------------------------------- what was exported
@dataclass
class GraphPort:
    """One input or output of the graph: its name, shape (``'N'``: the batch; ``'N_or_1'``: either),
    what it holds and, for an input with a default, the value onnxruntime uses when it is not fed."""

    name: str
    shape: List[Union[int, str]]
    doc: str
    default: Optional[List[float]] = None


@dataclass
class ExportSpec:
    """What :func:`export_onnx` wrote: the graph's inputs and outputs, how lambda enters it and the
    constants it was traced with. ``lambda_layers`` maps each lambda input (or ``'rule'``) to the CSC
    layers it sets."""

    path: str
    part: str  # 'classifier', 'encoder', 'decoder' or 'both'
    inputs: List[GraphPort]
    outputs: List[GraphPort]
    lambda_mode: str  # 'input', 'auto', or 'none' (no CSC layer in the exported part)
    lambda_layers: Dict[str, List[str]]
    trained_lambdas: Dict[str, float]
    rule: Optional[Dict[str, Any]]
    input_size: List[int]  # (C, H, W) of the images the graph takes (the decoder: those it gives)
    step_sizes: Dict[str, float]
    opset: int
    exporter: str
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def lambda_feeds(self, value: Union[float, Sequence[float]]) -> Dict[str, Any]:
        """The feeds that set every lambda input to ``value`` (a number, or one per image)."""
        import numpy as np

        array = np.atleast_1d(np.asarray(value, dtype=np.float32))
        return {name: array for name in self.lambda_layers if name != "rule"}


# ----------------------------------------------------------------------------- the module traced
class _Graph(nn.Module):
    """What the ONNX graph computes: ``part`` of ``model`` on its input, with each lambda input passed
    to its CSC layers as a per-image lambda and, with ``rule``, the rule applied by its own hooks;
    with a rule, the lambda it picked for each image is a second output."""

    def __init__(self, model: nn.Module, part: str, lambda_layers: Dict[str, List[str]],
                 rule: Optional[LambdaRule]) -> None:
        super().__init__()
        self.model = model
        self.part = part
        self.lambda_names = list(lambda_layers)
        self.lambda_layers = lambda_layers
        self.rule = rule

    def forward(self, x: Tensor, *lams: Tensor) -> Tuple[Tensor, ...]:
        chosen: Dict[str, Tensor] = {}
        with contextlib.ExitStack() as stack:
            stack.enter_context(_per_image_lambdas(self.model, {n: (lam, self.lambda_layers[n])
                                                                for n, lam in zip(self.lambda_names, lams)}))
            if self.rule is not None:
                stack.enter_context(self.rule.applied(self.model))
                stack.enter_context(_capture_lambda(self.model, self.rule.layer, chosen))
            outputs = _run_part(self.model, self.part, x)
        return outputs + ((chosen["lam"],) if self.rule is not None else ())


def _run_part(model: nn.Module, part: str, x: Tensor) -> Tuple[Tensor, ...]:
    """The part's outputs, as ``csc eval`` computes them: ``model(x)`` runs the input normalisation
    hook; an autoencoder's ``decode`` maps its tanh output back to the input's units."""
    if part in ("classifier", "encoder"):
        return (model(x),)
    if part == "decoder":
        return (model.decode(x),)
    features = model(x)
    return features, model.decode(features)


@contextlib.contextmanager
def _per_image_lambdas(model: nn.Module, inputs: Dict[str, Tuple[Tensor, List[str]]]) -> Iterator[None]:
    """Inside the block each named CSC layer solves with the per-image lambda of its input (the
    layer's ``lam=`` argument, as a rule's hooks pass it)."""
    modules = dict(model.named_modules())
    handles = []

    def hook_for(lam: Tensor) -> Callable:
        def hook(mod, args, kwargs):
            return args, {**kwargs, "lam": lam}
        return hook

    try:
        for lam, layers in inputs.values():
            handles += [modules[name].register_forward_pre_hook(hook_for(lam), with_kwargs=True) for name in layers]
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _capture_lambda(model: nn.Module, layer: str, into: Dict[str, Tensor]) -> Iterator[None]:
    """Record the lambda ``layer`` is called with (registered after a rule's hooks, it sees the one
    the rule picked)."""
    def hook(mod, args, kwargs):
        into["lam"] = kwargs["lam"]

    handle = model.get_submodule(layer).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- planning
def _part_of(model: nn.Module, part: Optional[str]) -> str:
    if is_autoencoder(model):
        part = part or "both"
        if part not in PARTS:
            raise ValueError(f"--part must be one of {', '.join(PARTS)} for an autoencoder, got {part!r}")
        return part
    if part not in (None, "classifier"):
        raise ValueError(f"--part {part} is for autoencoders; this model is a {card_of(model).task}: drop --part")
    return "classifier"


def _part_layers(model: nn.Module, part: str) -> List[str]:
    """The CSC layers the exported part runs, in registration order."""
    names = list(csc_layers(model))
    if part in ("encoder", "decoder"):
        return [n for n in names if n.startswith(part + ".")]
    return names


def _lambda_plan(model: nn.Module, part: str, lambda_inputs: str) -> Dict[str, List[str]]:
    """Each lambda input's name and the CSC layers it sets (see the module docstring)."""
    if lambda_inputs not in LAMBDA_INPUTS:
        raise ValueError(f"--lambda-inputs must be one of {', '.join(LAMBDA_INPUTS)}, got {lambda_inputs!r}")
    layers = _part_layers(model, part)
    if not layers:
        return {}
    if lambda_inputs == "each":
        return {f"lambda.{name}": [name] for name in layers}
    encoder = [n for n in layers if n.startswith("encoder.")] if part in ("encoder", "both") else []
    # csc eval's lambda of an autoencoder: every encoder CSC layer; otherwise the first CSC layer
    shared = encoder or layers[:1]
    trained = csc_layers(model)
    values = {float(trained[n].lam) for n in shared}
    if len(values) > 1:  # one input's default cannot be each layer's trained value
        raise ValueError(f"the layers one lambda input would set were trained at different lambdas "
                         f"({', '.join(f'{v:g}' for v in sorted(values))}): export with --lambda-inputs each")
    return {"lambda": shared}


def _stored_rule(model: nn.Module, part: str) -> LambdaRule:
    card = getattr(model, "csc_card", None)
    if card is None or card.lambda_rule is None:
        raise ValueError("--lambda auto needs a calibrated model: run `csc eval MODEL --calibrate-lambda` and "
                         "export the MODEL.calibrated.safetensors it writes")
    rule = rule_from_dict(card.lambda_rule)
    layers = set(_part_layers(model, part))
    missing = [n for n in [rule.layer, *rule.shared_with] if n not in layers]
    if missing:
        raise ValueError(f"the stored lambda rule sets {missing[0]}, which the exported part ({part}) does not "
                         "run: export --part encoder or both")
    return rule


def _input_size(model: nn.Module, part: str, image_size: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    """(C, H, W) of the graph's images: the model's trained size unless ``image_size`` (H, W) asks."""
    card = card_of(model)
    if is_autoencoder(model):
        own = (model.in_chans, model.image_size, model.image_size)
        if image_size is not None and tuple(image_size) != own[1:]:
            raise ValueError(f"{card.arch} works at {own[1]}x{own[2]} only: drop --size")
        return own
    cfg = getattr(model, "pretrained_cfg", None) or {}
    own = tuple(card.data.input_size or cfg.get("input_size") or ())
    if len(own) != 3:
        raise ValueError("the model file does not record its input size: give --size H,W")
    if image_size is None:
        return tuple(int(v) for v in own)
    h, w = (int(v) for v in image_size)
    if h < 1 or w < 1:
        raise ValueError(f"--size must be positive, got {h},{w}")
    return int(own[0]), h, w


def _example_input(model: nn.Module, part: str, input_size: Sequence[int], batch: int = _EXAMPLE_BATCH) -> Tensor:
    """A seeded input of the part's shape: images in [0, 1], or features on the unit sphere."""
    gen = torch.Generator().manual_seed(0)
    if part == "decoder":
        z = torch.randn(batch, model.feature_dim, generator=gen)
        return z / z.norm(dim=1, keepdim=True)
    return torch.rand(batch, *input_size, generator=gen)


@torch.no_grad()
def _pin_step_sizes(model: nn.Module, part: str, x: Tensor) -> Dict[str, float]:
    """Fix every CSC layer's step at the input size it sees on ``x`` (see
    :meth:`~csc_cli.step_size.StepSizeState.pin`); returns them. A layer run at two sizes in one
    forward has no single step: refused."""
    seen: Dict[str, set] = {}
    handles = []

    def hook_for(name: str) -> Callable:
        def hook(mod, args, output):
            seen.setdefault(name, set()).add((tuple(args[0].shape[2:]), tuple(output.shape[2:])))
        return hook

    for name, layer in csc_layers(model).items():
        handles.append(layer.register_forward_hook(hook_for(name)))
    try:
        _run_part(model, part, x)
    finally:
        for handle in handles:
            handle.remove()
    steps = {}
    layers = csc_layers(model)
    for name, sizes in seen.items():
        if len(sizes) > 1:
            raise ValueError(f"CSC layer {name} runs at {len(sizes)} sizes in one forward: an ONNX graph has one "
                             "step size per layer, so this model cannot be exported")
        size, out = next(iter(sizes))
        steps[name] = float(layers[name].step_state.pin(size, out))
    return steps


# ----------------------------------------------------------------------------- tracing
def _median_dim(x: Tensor, dim: Optional[int] = None, keepdim: bool = False):
    """``torch.median(x, dim)``: the lower middle value of a sort (the same element). None for the
    median of the whole tensor (not replaced)."""
    if dim is None:
        return None
    n = x.shape[dim]
    values, indices = torch.sort(x, dim=dim)
    k = (n - 1) // 2
    value, index = values.narrow(dim, k, 1), indices.narrow(dim, k, 1)
    return torch.return_types.median((value, index) if keepdim else (value.squeeze(dim), index.squeeze(dim)))


def _searchsorted(sorted_sequence: Tensor, values: Tensor, *, out_int32: bool = False, right: bool = False,
                  side: Optional[str] = None, sorter: Optional[Tensor] = None) -> Optional[Tensor]:
    """``torch.searchsorted`` for a sorted 1-D sequence: how many entries lie below each value (``<=``
    for ``right``), which is the insertion index. None otherwise (not replaced)."""
    if not isinstance(values, Tensor) or sorted_sequence.dim() != 1 or sorter is not None:
        return None
    right = right or side == "right"
    column = values.unsqueeze(-1)
    below = (sorted_sequence <= column) if right else (sorted_sequence < column)
    return below.sum(-1).to(torch.int32 if out_int32 else torch.int64)


#: torch functions ONNX's function library cannot translate, and what computes the same values with
#: operators it can; applied while the graph is traced (:class:`_OnnxEquivalents`).
_EQUIVALENTS: Dict[Callable, Callable] = {torch.median: _median_dim, Tensor.median: _median_dim,
                                          torch.searchsorted: _searchsorted}


class _OnnxEquivalents(torch.overrides.TorchFunctionMode):
    """While tracing, call the equal-valued replacement of a function in :data:`_EQUIVALENTS` (the
    mode is off inside its own handler, so the replacements run plain torch)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        replacement = _EQUIVALENTS.get(func)
        out = replacement(*args, **kwargs) if replacement is not None else None
        return func(*args, **kwargs) if out is None else out


def _trace(graph: _Graph, x: Tensor, lams: List[Tensor], input_names: List[str], output_names: List[str]):
    """``torch.export`` + the dynamo ONNX exporter (their console chatter and warnings dropped); the
    batch dimension of the graph's inputs and outputs is named ``N``. An operator ONNX cannot express
    raises ``torch.onnx.OnnxExporterError``."""
    batch = torch.export.Dim("N", min=1)
    shapes = ({0: batch}, tuple({0: batch} for _ in lams)) if lams else ({0: batch},)  # forward(x, *lams)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with _OnnxEquivalents():
            program = torch.export.export(graph, (x, *lams), dynamic_shapes=shapes, strict=False)
        onnx_program = torch.onnx.export(program, (x, *lams), dynamo=True, input_names=input_names,
                                         output_names=output_names, verbose=False)
    proto = onnx_program.model_proto
    symbol = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    for value in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        dims = value.type.tensor_type.shape.dim
        for dim in dims:
            if symbol and dim.dim_param == symbol:
                dim.dim_param = "N"
    return proto


def _lambda_defaults(proto, lambdas: Dict[str, float], batch_input: str) -> None:
    """Turn each traced per-image lambda input ``NAME__per_image`` [N] into the graph input ``NAME``
    of shape [1] or [N] with the trained value as its initializer (onnxruntime's default when the
    input is not fed), expanded to [N] by the graph."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    traced = {i.name: i for i in graph.input}
    nodes = []
    for name, value in lambdas.items():
        internal = name + _PER_IMAGE
        if internal not in traced:  # the graph does not depend on it
            continue
        graph.input.remove(traced[internal])
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N_or_1"]))
        graph.initializer.append(numpy_helper.from_array(np.array([value], dtype=np.float32), name))
        nodes.append(helper.make_node("Expand", [name, "lambda__batch"], [internal], name=f"{name}__expand"))
    if nodes:  # [N] from the batch input's shape, first
        nodes.insert(0, helper.make_node("Shape", [batch_input], ["lambda__batch"], start=0, end=1,
                                         name="lambda__batch"))
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)


def _document(proto, spec: ExportSpec, normalization: Optional[Dict[str, List[float]]]) -> None:
    """Docstrings on the graph's inputs and outputs, and the spec in the model's metadata."""
    from onnx import helper

    docs = {port.name: port.doc for port in spec.inputs + spec.outputs}
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.doc_string = docs.get(value.name, "")
    proto.doc_string = (f"csc {spec.part}: {', '.join(p.name for p in spec.inputs)} -> "
                        f"{', '.join(p.name for p in spec.outputs)}; see metadata 'csc.export'")
    meta = {"part": spec.part, "inputs": [asdict(p) for p in spec.inputs], "outputs": [asdict(p) for p in spec.outputs],
            "lambda_mode": spec.lambda_mode, "lambda_layers": spec.lambda_layers, "rule": spec.rule,
            "trained_lambdas": spec.trained_lambdas, "input_size": spec.input_size, "normalization": normalization,
            "step_sizes": spec.step_sizes}
    helper.set_model_props(proto, {"csc.export": json.dumps(meta)})


# ----------------------------------------------------------------------------- the entry point
def _ports(model: nn.Module, part: str, input_size: Sequence[int], plan: Dict[str, List[str]],
           trained: Dict[str, float], rule: Optional[LambdaRule]) -> Tuple[List[GraphPort], List[GraphPort]]:
    c, h, w = input_size
    images_in = GraphPort("images", ["N", c, h, w], "images in [0, 1], float32 (the model normalises them)")
    features = GraphPort("features", ["N", getattr(model, "feature_dim", 0)], "features on the unit sphere")
    inputs = [features] if part == "decoder" else [images_in]
    if part == "classifier":
        outputs = [GraphPort("logits", ["N", getattr(model, "num_classes", 0)], "class scores (before softmax)")]
    elif part == "encoder":
        outputs = [features]
    elif part == "decoder":
        outputs = [GraphPort("images", ["N", c, h, w], "decoded images in the units the encoder takes ([0, 1])")]
    else:
        outputs = [features, GraphPort("reconstruction", ["N", c, h, w], "decode(encode(images)), in [0, 1]")]
    for name, layers in plan.items():
        value = trained[layers[0]]
        inputs.append(GraphPort(name, ["N_or_1"], f"lambda of {', '.join(layers)}: [1] for the batch or [N] per "
                                f"image; optional, trained value {value:g}", default=[value]))
    if rule is not None:
        outputs.append(GraphPort("lambda", ["N"], f"each image's lambda, picked by the {rule.kind} rule: "
                                 f"{rule.describe()}"))
    return inputs, outputs


def export_onnx(model: nn.Module, path: Union[str, Path], *, part: Optional[str] = None, lam: str = "input",
                lambda_inputs: str = "one", image_size: Optional[Sequence[int]] = None) -> ExportSpec:
    """Write ``model`` (as :func:`csc_cli.load` returns it) to ``path`` as an ONNX graph; see the
    module docstring. ``part``: ``'encoder'``, ``'decoder'`` or ``'both'`` (default) for an
    autoencoder, None for a classifier; ``lam``: ``'input'`` or ``'auto'``; ``lambda_inputs``:
    ``'one'`` or ``'each'``; ``image_size``: (H, W) instead of the model's own (a classifier's).
    ``model`` is not changed (a copy is traced). Raises ``ValueError`` with a one-line reason."""
    _require_onnx()
    if lam not in LAMBDA_MODES:
        raise ValueError(f"--lambda must be one of {', '.join(LAMBDA_MODES)}, got {lam!r}")
    part = _part_of(model, part)
    input_size = _input_size(model, part, image_size)
    work = copy.deepcopy(model).float().eval().cpu()
    notes: List[str] = []
    rule = _stored_rule(work, part) if lam == "auto" else None
    plan = {} if rule is not None else _lambda_plan(work, part, lambda_inputs)
    x = _example_input(work, part, input_size)
    try:
        steps = _pin_step_sizes(work, part, x)
    except RuntimeError as exc:  # a shape that does not fit the model: its own message, on one line
        raise ValueError(f"the model does not run at {input_size[1]}x{input_size[2]}: "
                         f"{str(exc).splitlines()[0]}") from None
    trained = {n: float(m.lam) for n, m in csc_layers(work).items()}
    try:
        proto = _export_graph(work, part, x, plan, rule, trained, input_size)
    except Exception as exc:  # noqa: BLE001 - a rule ONNX cannot express (or torch.export cannot trace):
        if rule is None:      # the lambda input instead; an error that is not the rule's fails again below
            raise ValueError(f"the graph could not be exported: {_reason(exc)}") from exc
        notes.append(f"the {rule.kind} rule could not be written in ONNX operators ({_reason(exc)}): exported "
                     "the lambda input instead")
        rule, plan = None, _lambda_plan(work, part, lambda_inputs)
        proto = _export_graph(work, part, x, plan, rule, trained, input_size)
    inputs, outputs = _ports(work, part, input_size, plan, trained, rule)
    if not plan and rule is None:
        notes.append(f"no CSC layer in the exported {part}: the graph has no lambda input")
    spec = ExportSpec(path=str(path), part=part, inputs=inputs, outputs=outputs,
                      lambda_mode="auto" if rule is not None else ("input" if plan else "none"),
                      lambda_layers=({"rule": [rule.layer, *rule.shared_with]} if rule is not None else plan),
                      trained_lambdas=trained, rule=None if rule is None else {**rule.to_dict(),
                                                                               "formula": rule.describe()},
                      input_size=list(input_size), step_sizes=steps,
                      opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0),
                      exporter=f"torch.onnx (dynamo, torch {torch.__version__})", notes=notes)
    norm = input_normalization(work)
    _document(proto, spec, None if norm is None else {"mean": norm.mean.flatten().tolist(),
                                                      "std": norm.std.flatten().tolist()})
    _save(proto, Path(path))
    return spec


def _export_graph(model: nn.Module, part: str, x: Tensor, plan: Dict[str, List[str]], rule: Optional[LambdaRule],
                  trained: Dict[str, float], input_size: Sequence[int]):
    import onnx

    graph = _Graph(model, part, plan, rule).eval()
    lams = [torch.full((x.shape[0],), trained[layers[0]]) for layers in plan.values()]
    input_name = "features" if part == "decoder" else "images"
    outputs = {"classifier": ["logits"], "encoder": ["features"], "decoder": ["images"],
               "both": ["features", "reconstruction"]}[part] + (["lambda"] if rule is not None else [])
    proto = _trace(graph, x, lams, [input_name] + [n + _PER_IMAGE for n in plan], outputs)
    _lambda_defaults(proto, {n: trained[layers[0]] for n, layers in plan.items()}, input_name)
    onnx.checker.check_model(proto)
    return proto


def _reason(exc: BaseException) -> str:
    """The innermost message of an exporter error, on one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(str(exc).split())
    return (text[:160] + "...") if len(text) > 160 else text or type(exc).__name__


def _save(proto, path: Path) -> None:
    import onnx

    if path.exists() and path.is_dir():
        raise ValueError(f"{path} is a directory: give a file name ending in .onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"csc export needs {exc.name}: {EXTRA_HINT}") from None


# ----------------------------------------------------------------------------- running and checking
def onnx_session(path: Union[str, Path]):
    """An onnxruntime CPU session for ``path``, without the warning onnxruntime logs for inputs that
    have defaults (it keeps them out of constant folding, which is the point)."""
    _require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, x: Tensor, lam: Union[None, float, Sequence[float]] = None,
             spec: Optional[ExportSpec] = None) -> Dict[str, Tensor]:
    """The graph's outputs by name for the input ``x``: with ``lam`` None the lambda inputs are not
    fed (their trained defaults), otherwise every lambda input of ``spec`` is set to ``lam``."""
    feeds = {session.get_inputs()[0].name: x.detach().float().cpu().numpy()}
    if lam is not None:
        if spec is None:
            raise ValueError("give the ExportSpec to feed lambda")
        feeds.update(spec.lambda_feeds(lam))
    names = [o.name for o in session.get_outputs()]
    return {n: torch.from_numpy(v) for n, v in zip(names, session.run(names, feeds))}


@torch.no_grad()
def csc_outputs(model: nn.Module, spec: ExportSpec, x: Tensor, lam: Optional[float] = None) -> Dict[str, Tensor]:
    """What csc computes for the graph's inputs, by output name -- ``csc eval``'s own way: the stored
    rule applied by its hooks (``spec.lambda_mode == 'auto'``, with the lambda it picked), or the
    lambda inputs' layers set to ``lam`` by :func:`~csc_cli.robust.lam.lambda_override` (None: as
    trained). Eval mode, on the CPU, the model's own step sizes."""
    model = model.eval()
    chosen: Dict[str, Tensor] = {}
    with contextlib.ExitStack() as stack:
        if spec.lambda_mode == "auto":
            rule = rule_from_dict(spec.rule)
            stack.enter_context(rule.applied(model))
            stack.enter_context(_capture_lambda(model, rule.layer, chosen))
        elif lam is not None:
            layers = [n for name, names in spec.lambda_layers.items() for n in names]
            stack.enter_context(lambda_override(model, {n: float(lam) for n in layers}))
        values = _run_part(model, spec.part, x.float())
    out = dict(zip([p.name for p in spec.outputs], values))  # the rule's "lambda" output comes last
    if spec.lambda_mode == "auto":
        out["lambda"] = chosen["lam"]
    return out


def compare(reference: Dict[str, Tensor], other: Dict[str, Tensor]) -> Dict[str, Dict[str, float]]:
    """Per output: the largest absolute difference and that difference relative to the largest
    magnitude of the reference (a relative error per entry would blow up on the zeros of sparse
    codes and near-zero logits)."""
    out = {}
    for name, ref in reference.items():
        ref64, got64 = ref.double(), other[name].double()
        if ref64.shape != got64.shape:
            raise ValueError(f"output {name}: csc gives {tuple(ref64.shape)}, onnxruntime {tuple(got64.shape)}")
        diff = float((ref64 - got64).abs().max()) if ref64.numel() else 0.0
        scale = float(ref64.abs().max()) if ref64.numel() else 0.0
        out[name] = {"max_abs": diff, "max_rel": diff / scale if scale > 0 else diff, "scale": scale}
    return out
