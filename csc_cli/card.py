"""The model card: everything a model file says about its model, as one validated dataclass.

A card names the timm architecture (``arch`` + ``model_kwargs``) and the ordered **edit log** that
turns that backbone into this model; :func:`csc_cli.models.rebuild` replays the log through the same
function (:func:`csc_cli.surgery.apply_edit`) that :func:`csc_cli.build_model` and
:func:`csc_cli.convert` used to make the edits. Then come the **task** (``classifier`` today), the
**data contract** (dataset, input size, mean/std, class names, evaluation transform: a loaded model
normalises its own input), the test-time lambda rule, a training summary and free-form notes.

Stored as JSON under the safetensors metadata key ``csc`` (``format: csc-model``,
``format_version: 2``). Files of format version 1 (csc 0.1.0 before the card) are read by
:meth:`ModelCard.from_document` and converted on the fly; saving such a model writes version 2.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .continuation import ContinuationPath
from .layers import CSC_OPTION_DEFAULTS, LAYER_CLASSES

__all__ = ["ModelCard", "DataContract", "Edit", "CardError", "FORMAT", "FORMAT_VERSION", "EDIT_OPS", "TASKS",
           "ALLOWED_MODEL_KWARGS"]

FORMAT = "csc-model"
FORMAT_VERSION = 2
TASKS = ("classifier", "autoencoder")
#: ``reparameterize`` fuses timm's re-parameterisable branches (RepVGG, MobileOne...);
#: ``to_csc`` turns the convolution at ``target`` (and its ``aliases``) into a CSC layer;
#: ``identity`` replaces ``target`` by ``nn.Identity``; ``new_csc`` puts a newly constructed CSC
#: layer (``layer``, ``geometry``, ``options``) at ``target``.
EDIT_OPS = ("reparameterize", "to_csc", "identity", "new_csc")

#: The timm ``create_model`` keyword arguments a card may carry, with their types.
ALLOWED_MODEL_KWARGS: Dict[str, type] = {
    "num_classes": int,
    "in_chans": int,
    "drop_rate": float,
    "drop_path_rate": float,
    "global_pool": str,
    "shortcut": bool,
    "mlp_ratio": float,  # VGG's pre-logits ConvMlp width
    "feature_dim": int,  # autoencoders (csc_cli.autoencoders): the feature dimension d
    "image_size": int,  # autoencoders: the side of the square images (ctrl_resnet: 64 or 128)
    "width": int,  # ctrl_resnet: the first stage's channels
}
_GEOMETRY_KEYS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
                  "padding_mode")


class CardError(ValueError):
    """A card (or a part of one) that is not valid; the message says what is wrong."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(n, str) and n for n in value)


def check_options(options: Any, where: str) -> Dict[str, Any]:
    """CSC layer options: known names, values of the default's type."""
    if not isinstance(options, dict):
        raise CardError(f"{where}: 'options' must be an object")
    unknown = set(options) - set(CSC_OPTION_DEFAULTS)
    if unknown:
        raise CardError(f"{where}: unknown CSC options {sorted(unknown)}")
    for key, value in options.items():
        default = CSC_OPTION_DEFAULTS[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = _number(value)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise CardError(f"{where}: option {key!r} has a bad value {value!r}")
    return dict(options)


def check_geometry(geometry: Any, where: str, *, transposed: bool = False) -> Dict[str, Any]:
    """A layer's geometry record: exactly the conv keys, plus ``output_padding`` for a transposed
    layer (whose padding is a list and whose padding mode is 'zeros', as in PyTorch)."""
    keys = _GEOMETRY_KEYS + (("output_padding",) if transposed else ())
    if not isinstance(geometry, dict) or set(geometry) != set(keys):
        raise CardError(f"{where}: 'geometry' must be an object with {', '.join(keys)}")
    g = geometry
    ints = [g["in_channels"], g["out_channels"], g["groups"]]
    tuples = [g["kernel_size"], g["stride"], g["dilation"]]
    ok = all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 20 for v in ints)
    ok = ok and all(isinstance(t, list) and 1 <= len(t) <= 2 and all(isinstance(v, int) and 0 < v <= 4096 for v in t)
                    for t in tuples)
    pad = g["padding"]
    ok = ok and (pad in ("same", "valid", "tf_same") or (isinstance(pad, list) and 1 <= len(pad) <= 2 and all(
        isinstance(v, int) and 0 <= v <= 4096 for v in pad)))
    ok = ok and isinstance(g["bias"], bool) and g["padding_mode"] in ("zeros", "reflect", "replicate", "circular")
    if transposed:
        extra = g["output_padding"]
        ok = ok and isinstance(pad, list) and g["padding_mode"] == "zeros" and isinstance(extra, list) and (
            1 <= len(extra) <= 2 and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4096
                                         for v in extra))
    if not ok:
        raise CardError(f"{where}: bad geometry {json.dumps(g)[:200]}")
    return dict(g)


@dataclass
class Edit:
    """One step of the edit log (see :data:`EDIT_OPS`)."""

    op: str
    target: str = ""
    aliases: List[str] = field(default_factory=list)
    layer: str = ""  # the CSC class name of to_csc / new_csc
    geometry: Optional[Dict[str, Any]] = None
    options: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"op": self.op}
        if self.target:
            out["target"] = self.target
        if self.aliases:
            out["aliases"] = list(self.aliases)
        if self.layer:
            out["layer"] = self.layer
        if self.geometry is not None:
            out["geometry"] = dict(self.geometry)
        if self.options is not None:
            out["options"] = dict(self.options)
        return out

    @classmethod
    def from_dict(cls, doc: Any, where: str = "edit") -> "Edit":
        if not isinstance(doc, dict) or doc.get("op") not in EDIT_OPS:
            raise CardError(f"{where}: 'op' must be one of {', '.join(EDIT_OPS)}")
        unknown = set(doc) - {"op", "target", "aliases", "layer", "geometry", "options"}
        if unknown:
            raise CardError(f"{where}: unknown fields {sorted(unknown)}")
        op = doc["op"]
        target = doc.get("target", "")
        if op != "reparameterize" and (not isinstance(target, str) or not target or len(target) > 500):
            raise CardError(f"{where}: {op} needs a module name as 'target'")
        aliases = doc.get("aliases", [])
        if aliases and not _names(aliases):
            raise CardError(f"{where}: 'aliases' must be a list of module names")
        edit = cls(op=op, target=target if op != "reparameterize" else "", aliases=list(aliases))
        if op in ("to_csc", "new_csc"):
            if doc.get("layer") not in LAYER_CLASSES:
                raise CardError(f"{where}: 'layer' must be one of {', '.join(LAYER_CLASSES)}")
            edit.layer = doc["layer"]
            edit.geometry = check_geometry(doc.get("geometry"), f"{where} ({target})",
                                           transposed=bool(getattr(LAYER_CLASSES[edit.layer], "transposed", False)))
            edit.options = check_options(doc.get("options", {}), f"{where} ({target})")
        return edit


@dataclass
class DataContract:
    """What the model's input is: images in [0, 1] of ``input_size`` (C, H, W), normalised inside
    the model by ``mean`` / ``std``; ``dataset`` names where they come from (``digits``,
    ``cifar10``, ``cifar100``, ``imagenet``, ``folder:PATH``, ``fake``); ``resize`` is the
    evaluation transform of decoded image files (shorter side to ``resize``, centre crop to the
    input size), ``None`` for datasets stored at their input size."""

    dataset: Optional[str] = None
    input_size: Optional[Tuple[int, int, int]] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    class_names: Optional[List[str]] = None
    resize: Optional[int] = None

    def __post_init__(self) -> None:
        self.validate("data")

    def validate(self, where: str) -> None:
        if self.dataset is not None and (not isinstance(self.dataset, str) or not self.dataset):
            raise CardError(f"{where}: 'dataset' must be a dataset name")
        if self.input_size is not None:
            size = list(self.input_size)
            if len(size) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16
                                         for v in size):
                raise CardError(f"{where}: 'input_size' must be [channels, height, width], got {self.input_size!r}")
            self.input_size = tuple(size)
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)) or not value or not all(_number(v) for v in value):
                raise CardError(f"{where}: '{key}' must be a list of numbers")
            setattr(self, key, tuple(float(v) for v in value))
        if (self.mean is None) != (self.std is None):
            raise CardError(f"{where}: give both 'mean' and 'std' or neither")
        if self.std is not None and (len(self.std) != len(self.mean) or not all(v > 0 for v in self.std)):
            raise CardError(f"{where}: 'std' must be positive, one value per channel like 'mean'")
        if self.class_names is not None and not (isinstance(self.class_names, list)
                                                 and all(isinstance(c, str) for c in self.class_names)):
            raise CardError(f"{where}: 'class_names' must be a list of strings")
        if self.resize is not None and not (isinstance(self.resize, int) and 0 < self.resize <= 1 << 16):
            raise CardError(f"{where}: 'resize' must be a positive integer")

    @property
    def normalization(self) -> Optional[Dict[str, List[float]]]:
        return None if self.mean is None else {"mean": list(self.mean), "std": list(self.std)}

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["input_size"] = list(self.input_size) if self.input_size else None
        out["mean"] = list(self.mean) if self.mean else None
        out["std"] = list(self.std) if self.std else None
        return out

    @classmethod
    def from_dict(cls, doc: Any, where: str = "data") -> "DataContract":
        if not isinstance(doc, dict):
            raise CardError(f"{where}: must be an object")
        unknown = set(doc) - {"dataset", "input_size", "mean", "std", "class_names", "resize"}
        if unknown:
            raise CardError(f"{where}: unknown fields {sorted(unknown)}")
        try:
            return cls(**doc)
        except CardError as exc:
            raise CardError(f"{where}: {exc}") from None


@dataclass
class ModelCard:
    arch: str
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    edits: List[Edit] = field(default_factory=list)
    task: str = "classifier"
    data: DataContract = field(default_factory=DataContract)
    lambda_rule: Optional[Dict[str, Any]] = None
    training: Optional[Dict[str, Any]] = None
    notes: Dict[str, Any] = field(default_factory=dict)  # free-form (converted_from, plan counts...)
    #: where the model is on its continuation path from the source convs (csc_cli.continuation), or
    #: None for plain CSC layers; only written when set
    continuation: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ queries
    def csc_edits(self) -> List[Edit]:
        return [e for e in self.edits if e.op in ("to_csc", "new_csc")]

    def copy(self) -> "ModelCard":
        return ModelCard.from_document(json.loads(json.dumps(self.to_document())))

    # ------------------------------------------------------------------ (de)serialisation
    def to_document(self, **versions: str) -> Dict[str, Any]:
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **versions, "arch": self.arch,
               "model_kwargs": dict(self.model_kwargs), "edits": [e.to_dict() for e in self.edits],
               "task": self.task, "data": self.data.to_dict(), "lambda_rule": self.lambda_rule,
               "training": self.training, "notes": self.notes}
        if self.continuation is not None:
            doc["continuation"] = self.continuation
        try:
            return json.loads(json.dumps(doc, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise CardError(f"the model card must be JSON-serialisable (numbers, strings, lists, dicts): {exc}") from None

    @classmethod
    def from_document(cls, doc: Any) -> "ModelCard":
        """A validated card from a file's metadata document (format version 1 or 2)."""
        if not isinstance(doc, dict):
            raise CardError("metadata must be a JSON object")
        if doc.get("format") != FORMAT:
            raise CardError(f"not a csc model file (format {doc.get('format')!r})")
        version = doc.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise CardError(f"format version {version!r} is not supported (this csc reads 1..{FORMAT_VERSION}); "
                            "a newer csc wrote it: upgrade csc")
        if version == 1:
            doc = _upgrade_v1(doc)
        arch = doc.get("arch")
        if not isinstance(arch, str) or not arch or len(arch) > 200:
            raise CardError("'arch' must be a non-empty architecture name")
        kwargs = check_model_kwargs(doc.get("model_kwargs", {}))
        edits_doc = doc.get("edits", [])
        if not isinstance(edits_doc, list):
            raise CardError("'edits' must be a list")
        edits = [Edit.from_dict(e, f"edit {i}") for i, e in enumerate(edits_doc)]
        task = doc.get("task", "classifier")
        if task not in TASKS:
            raise CardError(f"'task' must be one of {', '.join(TASKS)}, got {task!r}")
        data = DataContract.from_dict(doc.get("data") or {})
        for key in ("lambda_rule", "training"):
            if doc.get(key) is not None and not isinstance(doc[key], dict):
                raise CardError(f"'{key}' must be an object")
        if not isinstance(doc.get("notes", {}), dict):
            raise CardError("'notes' must be an object")
        continuation = doc.get("continuation")
        if continuation is not None:
            try:
                ContinuationPath.parse(continuation)
            except ValueError as exc:
                raise CardError(str(exc)) from None
        return cls(arch=arch, model_kwargs=kwargs, edits=edits, task=task, data=data,
                   lambda_rule=doc.get("lambda_rule"), training=doc.get("training"), notes=dict(doc.get("notes", {})),
                   continuation=continuation)

    # ------------------------------------------------------------------ free-form metadata
    def update(self, **info: Any) -> "ModelCard":
        """Set the card's fields from :func:`csc_cli.save`'s keyword metadata: ``dataset``,
        ``input_size``, ``normalization`` ({mean, std}), ``class_names``, ``resize``,
        ``lambda_rule``, ``training``, ``task``; anything else goes to ``notes``."""
        data = self.data.to_dict()
        for key in ("dataset", "input_size", "class_names", "resize"):
            if key in info:
                data[key] = info.pop(key)
        if "normalization" in info:
            norm = info.pop("normalization") or {}
            if not isinstance(norm, dict):
                raise CardError("normalization must be {'mean': [...], 'std': [...]}")
            data["mean"], data["std"] = norm.get("mean"), norm.get("std")
        if isinstance(data.get("input_size"), (list, tuple)):
            data["input_size"] = [int(v) for v in data["input_size"]]
        self.data = DataContract.from_dict(data)
        for key in ("lambda_rule", "training"):
            if key in info:
                setattr(self, key, info.pop(key))
        if "task" in info:
            if info["task"] not in TASKS:
                raise CardError(f"task must be one of {', '.join(TASKS)}")
            self.task = info.pop("task")
        self.notes.update(info)
        self.to_document()  # JSON-serialisable, or a clear error now
        return self


def check_model_kwargs(kwargs: Any) -> Dict[str, Any]:
    if not isinstance(kwargs, dict):
        raise CardError("'model_kwargs' must be an object")
    for key, value in kwargs.items():
        expected = ALLOWED_MODEL_KWARGS.get(key)
        if expected is None:
            raise CardError(f"model argument {key!r} is not allowed (allowed: {sorted(ALLOWED_MODEL_KWARGS)})")
        ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
        if expected is float:
            ok = _number(value)
        if not ok or (expected is int and not 0 <= value <= 1_000_000):
            raise CardError(f"model argument {key!r} has a bad value {value!r}")
    return dict(kwargs)


def _upgrade_v1(doc: Dict[str, Any]) -> Dict[str, Any]:
    """Format 1 (flat fields + free-form ``info``) as a version-2 document: the old fields are an
    edit log in a fixed order (fusion, identities, CSC layers)."""
    if not isinstance(doc.get("reparameterized", False), bool):
        raise CardError("'reparameterized' must be true or false")
    for key in ("identity_modules", "constructed_layers"):
        if not _names(doc.get(key, [])):
            raise CardError(f"'{key}' must be a list of module names")
    layers = doc.get("csc_layers", {})
    if not isinstance(layers, dict):
        raise CardError("'csc_layers' must be an object")
    constructed = set(doc.get("constructed_layers", []))
    unknown = constructed - set(layers)
    if unknown:
        raise CardError(f"constructed layers {sorted(unknown)} have no CSC layer record")
    edits: List[Dict[str, Any]] = [{"op": "reparameterize"}] if doc.get("reparameterized") else []
    edits += [{"op": "identity", "target": n} for n in doc.get("identity_modules", [])]
    for name, rec in layers.items():
        if not isinstance(rec, dict) or rec.get("class") not in LAYER_CLASSES:
            raise CardError(f"CSC layer {name!r} has no valid class")
        edits.append({"op": "new_csc" if name in constructed else "to_csc", "target": name,
                      "aliases": rec.get("aliases", []), "layer": rec["class"], "geometry": rec.get("geometry"),
                      "options": rec.get("options", {})})
    info = doc.get("info", {})
    if not isinstance(info, dict):
        raise CardError("'info' must be an object")
    info = dict(info)
    norm = info.pop("normalization", None) or {}
    data = {"dataset": info.pop("dataset", None), "input_size": info.pop("input_size", None),
            "mean": norm.get("mean") if isinstance(norm, dict) else None,
            "std": norm.get("std") if isinstance(norm, dict) else None,
            "class_names": info.pop("class_names", None)}
    return {"arch": doc.get("arch"), "model_kwargs": doc.get("model_kwargs", {}), "edits": edits,
            "task": "classifier", "data": data, "lambda_rule": info.pop("lambda_rule", None),
            "training": info.pop("training", None), "notes": info}
