"""Model files: one ``.safetensors`` file with the weights and, in its metadata, the model's card
(:class:`~csc_cli.card.ModelCard`: architecture, edit log, task, data contract, lambda rule,
training summary) -- no pickle anywhere on the load path.

:func:`load` validates the card before building anything, rebuilds the model with
:func:`csc_cli.models.rebuild` (timm's architecture, then the edit log replayed through the same
function that made the edits), loads the tensors strictly and returns the model in eval mode, taking
images in [0, 1] (its input normalisation is part of the model). Files of format version 1 load too.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import torch
import torch.nn as nn

from ._version import __version__
from .card import FORMAT, FORMAT_VERSION, CardError, ModelCard
from .continuation import ContinuationPath, attach
from .models import rebuild
from .surgery import convertible, find_convs, input_normalization, set_input_normalization, sync_card

__all__ = ["save", "load", "read_metadata", "read_card", "ModelFileError", "FORMAT", "FORMAT_VERSION"]

_MAX_METADATA_BYTES = 8 << 20


class ModelFileError(ValueError):
    """A file that is not a usable csc model file; the message says what is wrong."""


PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------- save
def _jsonable(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-serialisable (numbers, strings, lists, dicts): {exc}") from None


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(model: nn.Module, path: PathLike, **info: Any) -> Path:
    """Write ``model`` to ``path`` (a ``.safetensors`` file), atomically.

    ``info`` completes the file's copy of the model's card (``model.csc_card`` is left as it is):
    ``dataset``, ``input_size``, ``normalization`` (``{"mean": [...], "std": [...]}``: the model
    loaded from the file normalises its input with it), ``class_names``, ``resize``,
    ``lambda_rule``, ``training``, ``task``; other keys are kept as free-form notes. The
    architecture must be rebuildable by name (see :func:`csc_cli.create_model`)."""
    from safetensors.torch import save_model

    path = Path(path)
    if path.exists() and path.is_dir():
        raise ValueError(f"{path} is a directory: give a file name ending in .safetensors")
    card = sync_card(model).copy()
    own = input_normalization(model)
    norm = info.get("normalization")
    if own is not None and norm is not None and (
            not isinstance(norm, dict) or [round(v, 6) for v in norm.get("mean", [])] != [round(v, 6) for v in card.data.mean]
            or [round(v, 6) for v in norm.get("std", [])] != [round(v, 6) for v in card.data.std]):
        raise ValueError(f"the model normalises its input with mean {list(card.data.mean)}, std {list(card.data.std)}: "
                         "save it without another normalization (or change it with set_input_normalization)")
    try:
        card.update(**_jsonable(info, "model file metadata"))
        document = card.to_document(csc_version=__version__, torch_version=torch.__version__)
    except CardError as exc:
        raise ValueError(str(exc)) from None
    text = json.dumps(document, allow_nan=False)
    _atomic_write(path, lambda tmp: save_model(model, tmp, metadata={"csc": text}))
    return path


# ----------------------------------------------------------------------------- load
def _document(path: Path) -> Dict[str, Any]:
    from safetensors import safe_open

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
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: metadata is not valid JSON ({exc.msg})") from None


def read_card(path: PathLike) -> ModelCard:
    """The validated card of a model file (without building the model)."""
    path = Path(path)
    try:
        return ModelCard.from_document(_document(path))
    except CardError as exc:
        raise ModelFileError(f"{path}: {exc}") from None


def read_metadata(path: PathLike) -> Dict[str, Any]:
    """The card of a model file as a (format version 2) JSON document."""
    return read_card(path).to_document()


def load(path: PathLike, *, map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild the model stored in ``path`` and return it in eval mode, ready to run on images in
    [0, 1] (the card's normalisation is applied inside the model).

    ``model.csc_card`` is the file's :class:`~csc_cli.card.ModelCard`. Raises
    :class:`ModelFileError` with a one-line reason for anything wrong."""
    from safetensors.torch import load_model

    path = Path(path)
    card = read_card(path)
    try:
        model = rebuild(card)
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc} (architecture {card.arch})") from None
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=str(map_location))
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{path}: the tensors do not fit {card.arch} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from None
    if missing or unexpected:
        raise ModelFileError(f"{path}: the tensors do not fit {card.arch}: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
    model.to(map_location)
    if card.data.mean is not None:
        set_input_normalization(model, card.data.mean, card.data.std)
    if card.continuation is not None:  # saved mid-way on its continuation path: put it back there
        try:
            attach(model, *ContinuationPath.parse(card.continuation))
        except ValueError as exc:
            raise ModelFileError(f"{path}: {exc}") from None
    return model.eval()


def convertible_names(model: nn.Module) -> List[str]:
    """Names of the convolutions of ``model`` that could become CSC layers (for messages)."""
    return [n for n, _, k, _ in find_convs(model) if convertible(k)]


# ----------------------------------------------------------------------------- training state
STATE_FORMAT = "csc-train-state"


def save_state(path: PathLike, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Path:
    """Write resumable training state atomically: tensors in safetensors, the rest as JSON."""
    from safetensors.torch import save_file

    path = Path(path)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    text = json.dumps({"format": STATE_FORMAT, "format_version": 1, **_jsonable(meta, "training state")},
                      allow_nan=False)
    _atomic_write(path, lambda tmp: save_file(flat, tmp, metadata={"csc_state": text}))
    return path


def read_state_meta(path: PathLike) -> Dict[str, Any]:
    """The JSON part of a training state (epoch, step, the run's config ...) without its tensors."""
    return _read_state(path, tensors=False)[1]


def load_state(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read what :func:`save_state` wrote; :class:`ModelFileError` for anything else."""
    return _read_state(path, tensors=True)


def _read_state(path: PathLike, tensors: bool) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"resume file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            text = (fh.metadata() or {}).get("csc_state")
            values = {k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{path} is not a training state file ({type(exc).__name__})") from None
    try:
        meta = json.loads(text or "")
    except json.JSONDecodeError:
        raise ModelFileError(f"{path} is not a training state file (no readable metadata)") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise ModelFileError(f"{path} is not a csc training state file")
    return values, meta
