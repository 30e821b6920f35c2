"""The convert job: build or load a model, turn its convolutions into CSC layers, report, save."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

from ..checkpoint import load, save
from ..convert import calibrate_batchnorm, conversion_report, convert
from ..data import NORMALIZATION
from ..data.source import is_streamed, open_split
from ..models import create_model
from ..surgery import card_of, input_normalization, set_input_normalization


@dataclass
class ConvertConfig:
    source: str  # 'timm:NAME' or a model file
    layers: List[str] = field(default_factory=lambda: ["all"])
    include: List[str] = field(default_factory=list)
    exclude: List[str] = field(default_factory=list)
    kernel_sizes: Optional[List[int]] = None
    depthwise: Optional[bool] = None
    csc_options: Dict[str, Any] = field(default_factory=dict)
    num_classes: Optional[int] = None
    pretrained: bool = False
    weights: Optional[Path] = None
    dry_run: bool = False
    out: Optional[Path] = None
    calibrate_bn: int = 0
    data: Optional[str] = None
    data_dir: Optional[Path] = None
    compare_images: int = 64
    seed: int = 0


@dataclass
class ConvertResult:
    source: str
    arch: str
    plan: Dict[str, Any]
    parameters_before: int
    parameters_after: int
    distance: Optional[Dict[str, Any]]
    calibrated_batchnorms: int
    out: Optional[str]
    dry_run: bool
    warnings: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_weights(model: nn.Module, path: Path) -> None:
    """Local weights into ``model``: safetensors, or a torch checkpoint read with weights_only=True
    (``state_dict``/``model``/``state_dict_ema`` wrappers and ``module.`` prefixes are unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{path} is not a weights file torch can read safely ({type(exc).__name__})") from None
        for key in ("state_dict_ema", "state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{path} does not fit this model: {bad[0]} is {tuple(state[bad[0]].shape)}, "
                         f"the model has {tuple(own[bad[0]].shape)} (incompatible --num-classes?)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("lipschitz", "lipschitz_size", ".lam"))]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def _build_source(config: ConvertConfig) -> nn.Module:
    source = config.source
    if source.startswith("timm:"):
        return create_model(source[5:], pretrained=config.pretrained, num_classes=config.num_classes)
    path = Path(source)
    if not path.exists():
        raise ValueError(f"SOURCE must be timm:NAME or an existing model file, got {source!r}")
    if config.pretrained:
        raise ValueError("--pretrained applies to timm:NAME sources; a model file has its own weights")
    model = load(path)
    if config.num_classes is not None and config.num_classes != getattr(model, "num_classes", None):
        if not hasattr(model, "reset_classifier"):
            raise ValueError("this model has no reset_classifier: --num-classes cannot change it")
        model.reset_classifier(config.num_classes)
        card_of(model).model_kwargs["num_classes"] = config.num_classes
    return model


def _open(config: ConvertConfig, model: nn.Module, split: str):
    card = card_of(model)  # image files are decoded at the model's input size; tensors are stored at theirs
    size = card.data.input_size[-1] if card.data.input_size and is_streamed(config.data) else None
    return open_split(config.data, split, config.data_dir, image_size=size, resize=card.data.resize)


def _sample(config: ConvertConfig, data, model: nn.Module, n: int, split: str):
    """``(images, labels or None, description)``: ``n`` seeded raw [0, 1] images of ``data`` (only
    those are read), or seeded uniform noise shaped like the model's input when there is no data."""
    gen = torch.Generator().manual_seed(config.seed)
    if data is not None:
        idx = torch.randperm(len(data), generator=gen)[:n].sort().values
        images, labels = data.take(idx)[:2]
        return images, labels, f"{data.name} {split} ({len(idx)} images)"
    c, h, w = _input_size(model)
    return torch.rand(n, c, h, w, generator=gen), None, f"seeded noise {c}x{h}x{w} ({n} images, no dataset given)"


def _input_size(model: nn.Module):
    card = card_of(model)
    if card.data.input_size:
        return tuple(card.data.input_size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))


def _data_contract(config: ConvertConfig, model: nn.Module) -> None:
    """The converted model's input contract: a loaded model keeps its own; a timm model gets its
    pretrained_cfg's (or the --data dataset's) mean/std, so it takes [0, 1] images from here on."""
    card = card_of(model)
    if input_normalization(model) is not None:
        return
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if config.data and config.data in NORMALIZATION:
        mean, std = NORMALIZATION[config.data]
    else:
        mean, std = cfg.get("mean", NORMALIZATION["imagenet"][0]), cfg.get("std", NORMALIZATION["imagenet"][1])
    set_input_normalization(model, mean, std)
    if card.data.input_size is None and not config.data:  # with --data, the data says (see run_convert)
        card.update(input_size=[int(v) for v in cfg.get("input_size", (3, 224, 224))])


def _untrained_warning(config: ConvertConfig) -> Optional[str]:
    if config.source.startswith("timm:") and not config.pretrained and config.weights is None:
        return (f"{config.source} has random weights (no --pretrained or --weights): the conversion keeps "
                "nothing learned")
    return None


def run_convert(config: ConvertConfig) -> ConvertResult:
    if config.calibrate_bn and not config.data:
        raise ValueError("--calibrate-bn needs a dataset: add --data NAME (and --data-dir)")
    if config.calibrate_bn < 0:
        raise ValueError(f"--calibrate-bn must be >= 0, got {config.calibrate_bn}")
    if config.compare_images < 1:
        raise ValueError(f"--compare-images must be >= 1, got {config.compare_images}")
    torch.manual_seed(config.seed)
    warnings: List[str] = [w for w in [_untrained_warning(config)] if w]
    model = _build_source(config)
    if config.weights is not None:
        load_weights(model, config.weights)
    before = _count(model)
    arch = card_of(model).arch
    _data_contract(config, model)
    original = None if config.dry_run else copy.deepcopy(model).eval()
    test = _open(config, model, "test") if config.data and not config.dry_run else None
    input_size = list(test.input_size) if test is not None else list(_input_size(model))
    layers: Any = config.layers[0] if len(config.layers) == 1 and config.layers[0] in ("all", "stem") else config.layers
    model, plan = convert(model, layers, include=config.include, exclude=config.exclude,
                          kernel_sizes=config.kernel_sizes, depthwise=config.depthwise,
                          dry_run=config.dry_run, input_size=None if config.dry_run else input_size,
                          **config.csc_options)
    distance = None
    calibrated = 0
    out = None
    if not config.dry_run:
        if config.calibrate_bn:
            images, _, _ = _sample(config, _open(config, model, "train"), model, config.calibrate_bn, "train")
            calibrated = calibrate_batchnorm(model, images)
        images, labels, label = _sample(config, test, model, config.compare_images, "test" if test else "train")
        distance = {**conversion_report(original, model, images, labels), "on": label}
        warnings += distance["warnings"]
        if config.out is not None:
            info: Dict[str, Any] = {"converted_from": config.source, "plan": plan.to_dict()["counts"]}
            if test is not None:
                info.update(dataset=test.name, class_names=test.class_names, input_size=list(test.input_size))
            out = str(save(model.eval(), config.out, **info))
    return ConvertResult(
        source=config.source,
        arch=arch,
        plan=plan.to_dict(),
        parameters_before=before,
        parameters_after=_count(model),
        distance=distance,
        calibrated_batchnorms=calibrated,
        out=out,
        dry_run=config.dry_run,
        warnings=warnings,
    )
