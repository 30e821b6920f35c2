"""Model files: one ``.safetensors`` file with the weights and, in its metadata, everything needed
to rebuild the model -- no pickle anywhere on the load path.

The metadata key ``csc`` holds a JSON document::

    {"format": "csc-model", "format_version": 1, "csc_version": "...",
     "arch": "resnet18", "model_kwargs": {"num_classes": 10},
     "reparameterized": false, "identity_modules": ["act1"],
     "csc_layers": {"conv1": {"class": "CSCConv2d", "geometry": {...}, "options": {...}, "aliases": []}},
     "info": {"normalization": {...}, "class_names": [...], "input_size": [...], "training": {...}, ...}}

:func:`load` validates every field before building anything, rebuilds the architecture by name from
timm's registry, converts the recorded layers, loads the tensors strictly and returns the model in
eval mode with the step sizes it was saved with.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import torch
import torch.nn as nn

from . import __version__
from .convert import _conv_kind, csc_layer_for, find_convs, replace_module
from .layers import CSC_OPTION_DEFAULTS, CSCConvNd
from .models import ALLOWED_MODEL_KWARGS, model_spec

__all__ = ["save", "load", "read_metadata", "ModelFileError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "csc-model"
FORMAT_VERSION = 1
_MAX_METADATA_BYTES = 8 << 20


class ModelFileError(ValueError):
    """A file that is not a usable csc model file; the message says what is wrong."""


PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------- save
def _geometry_record(layer: CSCConvNd) -> Dict[str, Any]:
    return {
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel_size": list(layer.kernel_size),
        "stride": list(layer.stride),
        "padding": layer.padding if isinstance(layer.padding, str) else list(layer.padding),
        "dilation": list(layer.dilation),
        "groups": layer.groups,
        "bias": layer.bias is not None,
        "padding_mode": layer.padding_mode,
    }


def _csc_layers(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    records: Dict[str, Dict[str, Any]] = {}
    first_name: Dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, CSCConvNd):
            continue
        if id(module) in first_name:
            records[first_name[id(module)]]["aliases"].append(name)
            continue
        first_name[id(module)] = name
        records[name] = {"class": type(module).__name__, "geometry": _geometry_record(module),
                         "options": module.csc_options(), "aliases": []}
    return records


def _jsonable(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable (numbers, strings, lists, dicts): {exc}") from None


def save(model: nn.Module, path: PathLike, **info: Any) -> Path:
    """Write ``model`` to ``path`` (a ``.safetensors`` file), atomically.

    ``info`` is free-form JSON metadata stored with it -- by convention ``normalization``
    (``{"mean": [...], "std": [...]}``), ``class_names``, ``input_size``, ``dataset`` and ``training``
    (a summary). The architecture must be rebuildable by name (see :func:`csc_cli.create_model`).
    """
    from safetensors.torch import save_model

    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"{path} is a directory: give a file name ending in .safetensors")
    spec = model_spec(model)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "csc_version": __version__,
        "torch_version": torch.__version__,
        "arch": spec["arch"],
        "model_kwargs": spec.get("model_kwargs", {}),
        "reparameterized": bool(spec.get("reparameterized", False)),
        "identity_modules": list(spec.get("identity_modules", [])),
        "constructed_layers": list(spec.get("constructed_layers", [])),
        "csc_layers": _csc_layers(model),
        "info": _jsonable(info, "model file metadata"),
    }
    text = json.dumps(document, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_model(model, tmp, metadata={"csc": text})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# ----------------------------------------------------------------------------- load
def read_metadata(path: PathLike) -> Dict[str, Any]:
    """The validated ``csc`` metadata document of a model file (without building the model)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path} does not exist")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory, not a model file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for garbage
        raise ModelFileError(f"{path} is not a safetensors model file ({type(exc).__name__})") from None
    text = metadata.get("csc")
    if text is None:
        raise ModelFileError(f"{path} is a safetensors file without csc metadata: not a csc model file")
    if len(text) > _MAX_METADATA_BYTES:
        raise ModelFileError(f"{path}: metadata larger than {_MAX_METADATA_BYTES} bytes")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: metadata is not valid JSON ({exc.msg})") from None
    _validate(document, path)
    return document


def _fail(path: Path, message: str) -> None:
    raise ModelFileError(f"{path}: {message}")


def _validate(doc: Any, path: Path) -> None:
    """Check the metadata's shape and types before any of it is used."""
    if not isinstance(doc, dict):
        _fail(path, "metadata must be a JSON object")
    if doc.get("format") != FORMAT:
        _fail(path, f"not a csc model file (format {doc.get('format')!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        _fail(path, f"format version {version!r} is not supported (this csc reads 1..{FORMAT_VERSION})")
    if not isinstance(doc.get("arch"), str) or not doc["arch"] or len(doc["arch"]) > 200:
        _fail(path, "'arch' must be a non-empty architecture name")
    kwargs = doc.get("model_kwargs", {})
    if not isinstance(kwargs, dict):
        _fail(path, "'model_kwargs' must be an object")
    for key, value in kwargs.items():
        expected = ALLOWED_MODEL_KWARGS.get(key)
        if expected is None:
            _fail(path, f"model argument {key!r} is not allowed (allowed: {sorted(ALLOWED_MODEL_KWARGS)})")
        ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (expected is int and not 0 <= value <= 1_000_000):
            _fail(path, f"model argument {key!r} has a bad value {value!r}")
    if not isinstance(doc.get("reparameterized", False), bool):
        _fail(path, "'reparameterized' must be true or false")
    for key in ("identity_modules", "constructed_layers"):
        names = doc.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            _fail(path, f"'{key}' must be a list of module names")
    unknown_constructed = set(doc.get("constructed_layers", [])) - set(doc.get("csc_layers", {}) or {})
    if unknown_constructed:
        _fail(path, f"constructed layers {sorted(unknown_constructed)} have no CSC layer record")
    layers = doc.get("csc_layers", {})
    if not isinstance(layers, dict):
        _fail(path, "'csc_layers' must be an object")
    for name, rec in layers.items():
        if not isinstance(rec, dict) or rec.get("class") not in ("CSCConv1d", "CSCConv2d"):
            _fail(path, f"CSC layer {name!r} has no valid class")
        if not isinstance(rec.get("geometry"), dict) or not isinstance(rec.get("options"), dict):
            _fail(path, f"CSC layer {name!r} needs 'geometry' and 'options' objects")
        unknown = set(rec["options"]) - set(CSC_OPTION_DEFAULTS)
        if unknown:
            _fail(path, f"CSC layer {name!r} has unknown options {sorted(unknown)}")
        for key, value in rec["options"].items():
            default = CSC_OPTION_DEFAULTS[key]
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, (int, float)):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            else:
                ok = isinstance(value, str)
            if not ok:
                _fail(path, f"CSC layer {name!r}: option {key!r} has a bad value {value!r}")
        aliases = rec.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            _fail(path, f"CSC layer {name!r}: 'aliases' must be a list of names")
    if not isinstance(doc.get("info", {}), dict):
        _fail(path, "'info' must be an object")


def _geometry_matches(module: nn.Module, kind: str, record: Dict[str, Any]) -> bool:
    """Would ``module`` convert to a layer with the recorded geometry?"""
    tf_same = kind == "same" or (kind == "std_same" and getattr(module, "same_pad", False))
    expected = {
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
    return expected == record


def _construct(rec: Dict[str, Any], path: Path, name: str) -> CSCConvNd:
    from .layers import CSCConv1d, CSCConv2d

    cls = CSCConv1d if rec["class"] == "CSCConv1d" else CSCConv2d
    g = rec["geometry"]
    try:
        padding = g["padding"] if isinstance(g["padding"], str) else tuple(g["padding"])
        return cls(g["in_channels"], g["out_channels"], tuple(g["kernel_size"]), stride=tuple(g["stride"]),
                   padding=padding, dilation=tuple(g["dilation"]), groups=g["groups"], bias=bool(g["bias"]),
                   padding_mode=g["padding_mode"], **rec["options"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: CSC layer {name!r} has a bad geometry ({exc})") from None


def load(path: PathLike, *, map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild the model stored in ``path`` and return it in eval mode, ready to run.

    ``model.csc_info`` holds the file's free-form metadata (normalisation, class names, training
    summary...). Raises :class:`ModelFileError` with a one-line reason for anything wrong."""
    from safetensors.torch import load_model
    from timm.utils.model import reparameterize_model

    from .models import create_model

    path = Path(path)
    doc = read_metadata(path)
    try:
        model = create_model(doc["arch"], **doc.get("model_kwargs", {}))
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    if doc.get("reparameterized"):
        reparameterize_model(model, inplace=True)
    for name in doc.get("identity_modules", []):
        try:
            model.get_submodule(name)
        except AttributeError:
            _fail(path, f"module {name!r} (replaced by Identity) does not exist in {doc['arch']}")
        replace_module(model, name, nn.Identity())
    constructed = set(doc.get("constructed_layers", []))
    for name, rec in doc.get("csc_layers", {}).items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            _fail(path, f"CSC layer {name!r} does not exist in {doc['arch']}")
        if name in constructed:  # a layer added by the builder (e.g. SDNet-All's max-pool -> CSC)
            replace_module(model, name, _construct(rec, path, name))
            continue
        kind = _conv_kind(module)
        if kind is None or kind.startswith("!") or kind == "csc":
            _fail(path, f"{name!r} in {doc['arch']} is {type(module).__name__}, not a convertible convolution")
        try:
            if not _geometry_matches(module, kind, rec["geometry"]):
                _fail(path, f"CSC layer {name!r} does not match the geometry of {doc['arch']}'s layer")
            layer = csc_layer_for(module, kind, **rec["options"])
        except ValueError as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(f"{path}: CSC layer {name!r}: {exc}") from None
        for alias in [name, *rec.get("aliases", [])]:
            replace_module(model, alias, layer)
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=str(map_location))
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{path}: the tensors do not fit {doc['arch']} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from None
    if missing or unexpected:
        raise ModelFileError(f"{path}: the tensors do not fit {doc['arch']}: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
    model.csc_spec = {"arch": doc["arch"], "model_kwargs": doc.get("model_kwargs", {}),
                      "reparameterized": bool(doc.get("reparameterized")),
                      "identity_modules": list(doc.get("identity_modules", [])),
                      "constructed_layers": sorted(constructed)}
    model.csc_info = doc.get("info", {})
    return model.eval()


def convertible_names(model: nn.Module) -> List[str]:
    """Names of the convolutions of ``model`` that could become CSC layers (for messages)."""
    return [n for n, _, k, _ in find_convs(model) if not k.startswith("!") and k != "csc"]


# ----------------------------------------------------------------------------- training state
STATE_FORMAT = "csc-train-state"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_state(path: PathLike, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Path:
    """Write resumable training state atomically: tensors in safetensors, the rest as JSON."""
    from safetensors.torch import save_file

    path = Path(path)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    text = json.dumps({"format": STATE_FORMAT, "format_version": 1, **_jsonable(meta, "training state")},
                      allow_nan=False)
    _atomic_write(path, lambda tmp: save_file(flat, tmp, metadata={"csc_state": text}))
    return path


def load_state(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read what :func:`save_state` wrote; :class:`ModelFileError` for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"resume file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            text = (fh.metadata() or {}).get("csc_state")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{path} is not a training state file ({type(exc).__name__})") from None
    try:
        meta = json.loads(text or "")
    except json.JSONDecodeError:
        raise ModelFileError(f"{path} is not a training state file (no readable metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise ModelFileError(f"{path} is not a csc training state file")
    return tensors, meta
