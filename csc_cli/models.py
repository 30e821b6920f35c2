"""Architectures by name: timm's registry, with the build recorded so model files can rebuild it.

Every architecture csc registers is known here: the CIFAR ResNets below and the autoencoders of
:mod:`csc_cli.autoencoders` (imported for their registrations), so :func:`rebuild` finds any name a
model file gives. :func:`create_model` (timm's, with clear errors and the build recorded) lives in
:mod:`csc_cli.registry`, below both, and is re-exported here.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch.nn as nn

# imported for their timm registrations too (ctrl_dcgan32, ctrl_resnet): rebuild() finds them by name
from .autoencoders import build_autoencoder, is_autoencoder
from .card import ALLOWED_MODEL_KWARGS, Edit, ModelCard
from .convert import convert
from .registry import create_model
from .surgery import apply_edit, card_of, edit_model, to_csc_edit

__all__ = ["create_model", "build_model", "rebuild", "model_spec", "resolve_arch", "ALLOWED_MODEL_KWARGS",
           "CifarResNet", "build_autoencoder", "is_autoencoder"]


def rebuild(card: ModelCard) -> nn.Module:
    """The model a card describes (fresh weights): timm's ``arch`` with ``model_kwargs``, then the
    edit log replayed through :func:`csc_cli.surgery.apply_edit` -- the function that made the
    edits in :func:`build_model` and :func:`csc_cli.convert`. Raises ``ValueError`` (with the
    edit that failed) when the log does not fit the architecture."""
    model = create_model(card.arch, **card.model_kwargs)
    for edit in card.edits:
        apply_edit(model, edit)
    model.csc_card = card
    return model


def model_spec(model: nn.Module) -> Dict[str, Any]:
    """``{"arch", "model_kwargs"}`` of ``model`` (see :func:`csc_cli.surgery.card_of`)."""
    card = card_of(model)
    return {"arch": card.arch, "model_kwargs": dict(card.model_kwargs)}


# ----------------------------------------------------------------------------- CIFAR ResNets
from timm.models import register_model  # noqa: E402
from timm.models.resnet import BasicBlock  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class CifarBasicBlock(BasicBlock):
    """timm's BasicBlock (same module names, so the same conversions apply), plus an optional
    no-shortcut form: ``bn2(conv2(act1(bn1(conv1(x)))))`` with no addition and no final ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None, *, shortcut: bool = True):
        super().__init__(inplanes, planes, stride=stride, downsample=downsample)
        self.use_shortcut = shortcut
        if not shortcut:
            self.act2 = nn.Identity()

    def forward(self, x):
        if self.use_shortcut:
            return super().forward(x)
        return self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))


class CifarResNet(nn.Module):
    """ResNet for 32x32 images in the layout SDNet uses (kuangliu's): 3x3 stride-1 stem, no
    max-pool, BasicBlocks, global average pool, linear classifier. timm's API: ``forward_features``,
    ``forward_head``, ``reset_classifier``, ``get_classifier``, ``num_features``, ``pretrained_cfg``."""

    def __init__(self, layers, channels=(64, 128, 256, 512), num_classes: int = 10, in_chans: int = 3,
                 shortcut: bool = True, drop_rate: float = 0.0, global_pool: str = "avg", **_ignored):
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.act1 = nn.ReLU(inplace=True)
        inplanes = channels[0]
        for i, (repeats, planes) in enumerate(zip(layers, channels)):
            blocks = []
            for j in range(repeats):
                stride = 2 if i > 0 and j == 0 else 1
                downsample = None
                if shortcut and (stride != 1 or inplanes != planes):
                    downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                blocks.append(CifarBasicBlock(inplanes, planes, stride, downsample, shortcut=shortcut))
                inplanes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.num_features = inplanes
        self.global_pool = global_pool
        self.fc = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def _cifar_resnet(name: str, layers, channels, pretrained: bool, kwargs: Dict[str, Any]) -> nn.Module:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights: train it with `csc train`")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    model = CifarResNet(layers, channels, **kwargs)
    model.pretrained_cfg = model.default_cfg = {
        "architecture": name, "input_size": (kwargs.get("in_chans", 3), 32, 32), "mean": CIFAR_MEAN,
        "std": CIFAR_STD, "num_classes": model.num_classes, "first_conv": "conv1", "classifier": "fc",
    }
    return model


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-18 for CIFAR (SDNet-18's backbone): 11,173,962 parameters with 10 classes."""
    return _cifar_resnet("resnet18_cifar", (2, 2, 2, 2), (64, 128, 256, 512), pretrained, kwargs)


@register_model
def resnet34_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-34 for CIFAR (SDNet-34's backbone)."""
    return _cifar_resnet("resnet34_cifar", (3, 4, 6, 3), (64, 128, 256, 512), pretrained, kwargs)


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-20 for CIFAR (He et al.): 16/32/64 channels, 3x3 blocks per stage, ~0.27M
    parameters -- for quick runs."""
    return _cifar_resnet("resnet20_cifar", (3, 3, 3), (16, 32, 64), pretrained, kwargs)


# ----------------------------------------------------------------------------- SDNet builder
def _is_basic_resnet(model: nn.Module) -> bool:
    has_stem = all(hasattr(model, a) for a in ("conv1", "bn1", "act1"))
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    return has_stem and bool(blocks)


CIFAR_LAYOUTS = {"resnet18": "resnet18_cifar", "resnet34": "resnet34_cifar"}
SMALL_IMAGES = 64  # up to this side length a ResNet keeps its resolution in the stem (CIFAR layout)


def resolve_arch(arch: str, image_size: int) -> Tuple[str, Optional[str]]:
    """The architecture a name means for images of ``image_size`` px, and a note when it is not the
    literal name. On small images (CIFAR, digits) ``resnet18`` / ``resnet34`` are the paper's CIFAR
    layout (3x3 stride-1 stem, no max-pool: SDNet-18 is 11,173,962 parameters on CIFAR-10); timm's
    ImageNet layout (7x7 stride-2 stem + max-pool: a 32 px image is 8x8 after it) is ``timm:resnet18``."""
    if arch.startswith("timm:"):
        return arch[len("timm:"):], None
    if arch in CIFAR_LAYOUTS and image_size <= SMALL_IMAGES:
        cifar = CIFAR_LAYOUTS[arch]
        return cifar, (f"--arch {arch} on {image_size} px images builds {cifar}, the paper's CIFAR layout (3x3 "
                       f"stride-1 stem, no max-pool); for timm's ImageNet layout ask for --arch timm:{arch}")
    return arch, None


def build_model(arch: str, num_classes: Optional[int] = None, *, csc: str = "stem", shortcut: bool = True,
                pretrained: bool = False, in_chans: Optional[int] = None, drop_rate: Optional[float] = None,
                **csc_options: Any) -> nn.Module:
    """A model by name, as a plain ConvNet (``csc='none'``) or as an SDNet.

    ``csc='stem'`` converts the stem conv and, in ResNets, removes the ReLU right after its BN (the
    non-negative code is the nonlinearity): SDNet-18/34. ``csc='all'`` also converts both 3x3 convs
    of every BasicBlock and removes the ReLU between them (SDNet-18-All); in an ImageNet-layout
    ResNet the max-pool becomes a stride-2 CSC(C->C, 3x3) layer; 1x1 projection shortcuts stay
    convs. ``shortcut=False`` (CIFAR ResNets with ``csc='all'``) drops the additions and the
    projection shortcuts: a pure CSC+BN stack. Other timm ConvNets: 'stem' converts the first conv,
    'all' every conv (see :func:`csc_cli.convert`)."""
    if csc not in ("stem", "all", "none"):
        raise ValueError(f"csc must be 'stem', 'all' or 'none', got {csc!r}")
    from .choices import CTRL_ARCHS

    if arch in CTRL_ARCHS:
        raise ValueError(f"{arch} is an autoencoder: build it with csc_cli.models.build_autoencoder (csc train "
                         "does), not build_model")
    kwargs: Dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if not shortcut:
        if csc != "all":
            raise ValueError("shortcut=False is the no-shortcut SDNet-All variant: use it with csc='all'")
        if not arch.endswith("_cifar"):
            raise ValueError(f"shortcut=False needs a CIFAR ResNet (resnet18_cifar, ...), not {arch!r}")
        kwargs["shortcut"] = False
    model = create_model(arch, pretrained=pretrained, **kwargs)
    if csc == "none":
        return model
    if not _is_basic_resnet(model):
        convert(model, "stem" if csc == "stem" else "all", **{"units": "code", **csc_options})
        return model
    edit_model(model, to_csc_edit(model.conv1, "conv1", **csc_options))
    edit_model(model, Edit("identity", "act1"))
    if csc == "all":
        blocks = [name for name, m in model.named_modules() if isinstance(m, BasicBlock)]
        for name in blocks:
            for conv in ("conv1", "conv2"):
                edit_model(model, to_csc_edit(model.get_submodule(f"{name}.{conv}"), f"{name}.{conv}", **csc_options))
        for name in blocks:
            edit_model(model, Edit("identity", f"{name}.act1"))
        pool = getattr(model, "maxpool", None)
        if isinstance(pool, nn.MaxPool2d):
            width = model.conv1.out_channels
            geometry = {"in_channels": width, "out_channels": width, "kernel_size": [3, 3], "stride": [2, 2],
                        "padding": [1, 1], "dilation": [1, 1], "groups": 1, "bias": False, "padding_mode": "zeros"}
            edit_model(model, Edit("new_csc", "maxpool", [], "CSCConv2d", geometry, dict(csc_options)))
    return model
