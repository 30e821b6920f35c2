"""The export job: a model file as an ONNX graph (:mod:`csc_cli.export`), checked against csc.

``run_export(ExportConfig(...), progress) -> ExportResult``. With ``check`` > 0 the graph runs in
onnxruntime on that many images (the model's own test split, or seeded noise when its file names no
dataset) and its outputs are compared with csc's: as trained (the lambda input not fed) and at a
raised lambda fed as an input, or with the stored rule (``--lambda auto``: the lambda each image
got too). The job fails with a one-line ``ValueError`` when a difference exceeds ``tolerance``
(relative to the largest magnitude of csc's output).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checkpoint import load
from ..export import ExportSpec, compare, csc_outputs, export_onnx, onnx_session, run_onnx
from ..surgery import card_of
from .common import evaluation_data
from .events import ProgressFn, Step, ignore

#: The check's default tolerance: the largest difference relative to the largest magnitude of csc's
#: output. fp32 round-off through an unrolled solver and a deep network stays near 1e-6 here.
TOLERANCE = 1e-4
RAISED = 4.0  # the check's lambda fed as an input: this many times the trained one
_BATCH = 64


@dataclass
class ExportConfig:
    model: str
    out: Optional[str] = None  # default: MODEL with the suffix .onnx (.encoder.onnx / .decoder.onnx for a part)
    part: Optional[str] = None  # an autoencoder's encoder, decoder or both (default)
    lam: str = "input"  # 'input' (a graph input, default the trained value) or 'auto' (the stored rule)
    lambda_inputs: str = "one"  # one input for the layers csc eval --lambda sets, or 'each' (one per layer)
    size: Optional[Tuple[int, int]] = None  # (H, W): another input size (its own step sizes)
    check: int = 0  # images to compare csc and onnxruntime on (0: no check)
    tolerance: float = TOLERANCE
    data: Optional[str] = None  # the check's dataset (default: the model file's; seeded noise without one)
    data_dir: Optional[str] = None
    seed: int = 0


@dataclass
class ExportResult:
    model: str
    out: str
    spec: Dict[str, Any]
    file_bytes: int
    seconds: float
    check: Optional[Dict[str, Any]]
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def default_out(model: str, part: Optional[str]) -> Path:
    """``MODEL.onnx`` beside the model file (``MODEL.encoder.onnx`` / ``.decoder.onnx`` for a part)."""
    path = Path(model)
    suffix = f".{part}.onnx" if part in ("encoder", "decoder") else ".onnx"
    return path.with_name(path.stem + suffix)


def _check_config(config: ExportConfig) -> None:
    if config.check < 0:
        raise ValueError(f"--check must be >= 0 images, got {config.check}")
    if not config.tolerance >= 0:
        raise ValueError(f"--tolerance must be >= 0, got {config.tolerance}")
    if config.out is not None and not str(config.out).endswith(".onnx"):
        raise ValueError(f"--out {config.out}: give a file name ending in .onnx")


def run_export(config: ExportConfig, progress: Optional[ProgressFn] = None) -> ExportResult:
    """Export (and check) a model file; see the module docstring."""
    emit = progress or ignore
    _check_config(config)
    start = time.perf_counter()
    model = load(config.model)
    out = Path(config.out) if config.out else default_out(config.model, config.part)
    emit(Step("tracing and translating to ONNX", 0, 1))
    spec = export_onnx(model, out, part=config.part, lam=config.lam, lambda_inputs=config.lambda_inputs,
                       image_size=config.size)
    emit(Step("tracing and translating to ONNX", 1, 1))
    notes = list(spec.notes)
    check = None
    if config.check:
        check = check_export(model, spec, config, emit)
        notes += check.pop("notes")
    return ExportResult(model=str(config.model), out=str(out), spec=spec.to_dict(), file_bytes=out.stat().st_size,
                        seconds=time.perf_counter() - start, check=check, notes=notes)


# ----------------------------------------------------------------------------- the check
def check_images(model, spec: ExportSpec, config: ExportConfig) -> Tuple[Tensor, str, List[str]]:
    """``(images, what they are, notes)``: ``config.check`` seeded test images of the model's dataset
    (``config.data`` overrides it) at the export size, or seeded noise in [0, 1] without a dataset."""
    card = card_of(model)
    notes: List[str] = []
    name = config.data or card.data.dataset
    c, h, w = spec.input_size
    if not name:
        gen = torch.Generator().manual_seed(config.seed)
        return torch.rand(config.check, c, h, w, generator=gen), f"seeded noise {c}x{h}x{w}", \
            ["the model file names no dataset: checked on seeded noise in [0, 1] (give --data for real images)"]
    sample = evaluation_data(card, name, config.data_dir, config.check, config.seed)
    images, _ = sample.take()
    if images.shape[1] != c:
        raise ValueError(f"{name} has {images.shape[1]}-channel images, the model takes {c}: give another --data")
    if tuple(images.shape[2:]) != (h, w):
        notes.append(f"check images resized from {images.shape[2]}x{images.shape[3]} to the export size {h}x{w}")
        images = F.interpolate(images.float(), size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    return images.float(), f"{name} test ({images.shape[0]} images)", notes


def _batches(x: Tensor) -> List[Tensor]:
    return list(x.split(_BATCH))


def _settings(spec: ExportSpec) -> List[Tuple[str, Optional[float]]]:
    """The check's rows: (what, lambda fed or None)."""
    if spec.lambda_mode == "auto":
        return [(f"auto: the stored {spec.rule['rule']} rule", None)]
    if spec.lambda_mode == "none":
        return [("as trained", None)]
    first = next(iter(spec.lambda_layers.values()))[0]
    raised = round(RAISED * spec.trained_lambdas[first], 6)
    return [("as trained (lambda not fed)", None), (f"lambda {raised:g} fed ({RAISED:g}x trained)", raised)]


def check_export(model, spec: ExportSpec, config: ExportConfig, emit: ProgressFn = ignore) -> Dict[str, Any]:
    """Compare csc and onnxruntime on ``config.check`` images (see the module docstring); raises a
    one-line ``ValueError`` above ``config.tolerance``. Returns the check's report."""
    images, on, notes = check_images(model, spec, config)
    inputs = images
    if spec.part == "decoder":  # the decoder's input: the model's own features of the images
        with torch.no_grad():
            inputs = torch.cat([model.eval().encode(b) for b in _batches(images)])
        on += ", encoded by the model"
    session = onnx_session(spec.path)
    rows = []
    settings = _settings(spec)
    for i, (what, lam) in enumerate(settings):
        reference: Dict[str, List[Tensor]] = {}
        got: Dict[str, List[Tensor]] = {}
        for batch in _batches(inputs):
            for store, values in ((reference, csc_outputs(model, spec, batch, lam)),
                                  (got, run_onnx(session, batch, lam, spec))):
                for name, value in values.items():
                    store.setdefault(name, []).append(value)
        ref = {n: torch.cat(v) for n, v in reference.items()}
        onnx_out = {n: torch.cat(v) for n, v in got.items()}
        row: Dict[str, Any] = {"setting": what, "lambda": lam, "outputs": compare(ref, onnx_out)}
        if spec.part == "classifier":
            row["top1_agreement"] = float((ref["logits"].argmax(1) == onnx_out["logits"].argmax(1)).double().mean())
        rows.append(row)
        emit(Step("checking against csc", i + 1, len(settings), what))
    # a NaN difference is the worst (max() would keep whatever came first)
    worst = max(((r["setting"], name, d["max_rel"] if d["max_rel"] == d["max_rel"] else float("inf"))
                 for r in rows for name, d in r["outputs"].items()), key=lambda item: item[2])
    report = {"on": on, "images": int(images.shape[0]), "tolerance": config.tolerance, "rows": rows,
              "max_abs": max(d["max_abs"] for r in rows for d in r["outputs"].values()),
              "max_rel": worst[2], "passed": worst[2] <= config.tolerance, "notes": notes,
              "measure": "largest |csc - onnxruntime| relative to the largest |csc| of that output"}
    if not report["passed"]:
        raise ValueError(f"onnxruntime differs from csc by {worst[2]:.3g} relative on '{worst[1]}' ({worst[0]}), "
                         f"above the tolerance {config.tolerance:g}: {spec.path} was written, but do not deploy it")
    return report

