"""The autoencoders of CTRL and CSC-CTRL: an encoder ``f`` onto the unit sphere in R^d and a decoder
``g`` back to images, as separate submodules (the CTRL game steps them with separate optimisers).

Two architectures, registered with timm (``csc_cli.create_model(name, **kwargs)`` builds them and
:func:`csc_cli.load` rebuilds them by name):

* ``ctrl_dcgan32`` -- CTRL's 32x32 pair (MNIST, CIFAR-10), bias-free. Encoder::

      conv1 4x4/s2/p1 C->64, act1 LReLU(0.2)
      conv2 4x4/s2/p1 64->128, bn2, act2 LReLU(0.2)
      conv3 4x4/s2/p1 128->256, bn3, act3 LReLU(0.2)
      conv4 4x4/s1/p0 256->d, flatten, sphere (l2-normalise)

  Decoder::

      feature_map z -> sqrt(d) z as (d, 1, 1)
      deconv1 convT4x4/s1/p0 d->256, bn1, act1 ReLU
      deconv2 convT4x4/s2/p1 256->128, bn2, act2 ReLU
      deconv3 convT4x4/s2/p1 128->64, bn3, act3 ReLU
      deconv4 convT4x4/s2/p1 64->C, tanh

* ``ctrl_resnet`` -- a residual pair in the spirit of the SNGAN-128 discriminator / generator the CTRL
  reference uses on 128 px images (``image_size`` 64 or 128, ``width`` w, default 32). Channels per
  stage ``(w, 2w, 4w, 8w, 8w)``, one stage per halving down to 4x4. Encoder: ``block1..blockN``
  (:class:`DownBlock`: ``conv1 3x3/s2 - bn1 - act1 LReLU - conv2 3x3/s1 - bn2``, shortcut
  ``1x1/s2 conv - BN``, added, then ``act2`` LReLU), ``conv_out`` 4x4/p0 -> d, flatten, sphere.
  Decoder: feature_map (``sqrt(d) z`` as (d, 1, 1)), ``conv_in`` convT4x4/s1/p0 d->8w (4x4), ``bn_in``,
  ``act_in`` ReLU, ``block1..blockN`` (:class:`UpBlock`: ``conv1 convT4x4/s2/p1 - bn1 - act1 ReLU - conv2 convT3x3/s1/p1
  - bn2``, shortcut ``convT2x2/s2 - BN``, added, then ``act2`` ReLU), ``conv_out`` convT3x3/s1/p1 -> C,
  tanh. Only (transposed) convolutions, so every layer has a CSC counterpart.

:func:`build_autoencoder` gives CTRL (``csc='none'``) or CSC-CTRL (``csc='all'``). CSC-CTRL's exact
layer table is not public (see PAPER.md section 2); these are **our design choices**, made through
the surgery engine (:func:`csc_cli.surgery.edit_model`, so a model file replays them):

1. Every encoder conv becomes a :class:`~csc_cli.layers.CSCConv2d` and every decoder transposed conv
   but the last (the image's synthesis, 3. below) a :class:`~csc_cli.layers.CSCConvTranspose2d`
   (sparse deconvolution) -- the 1x1 / 2x2 projection
   shortcuts of ``ctrl_resnet`` included (SDNet-All keeps its 1x1 shortcuts as convs; CSC-CTRL is
   described as CSC "everywhere", and converting them keeps every layer a dictionary). Options
   default to SDNet's layer: ``lam=0.1, steps=2, units='code'``, non-negative codes.
2. As in SDNet-All, the non-negative code is the nonlinearity: the activation right after a converted
   layer (after its BN, when it has one) becomes ``nn.Identity`` (``identity`` edits). Activations
   after a residual addition stay (SDNet-All keeps the ReLU after ``+ shortcut``): they act on a sum,
   not on a code.
3. The two **ends** are different. The last encoder layer (-> the d features that are l2-normalised
   onto the sphere) takes a **signed** code (``nonneg=False``): a non-negative code there would
   confine the features to the positive orthant of the sphere, losing most of the room rate reduction
   needs; the flatten + l2-normalisation after it is kept. The image is a **synthesis** of the last
   sparse deconvolution's code (``image='synthesis'``, the default since issue 30): the decoder's
   last layer stays a transposed conv, so ``x = tanh(D_1 z_1)`` with ``z_1`` the previous stage's
   (BN'd) code and ``D_1`` that layer's weight -- the paper's generative model ``x = D_1 z_1``, where
   the image is the synthesis of a sparse code and not itself sparse (in ``ctrl_resnet``, z_1 is the
   last block's output, the ReLU of a residual sum). ``image='code'`` is the layout
   before issue 30: the last decoder layer is a sparse deconvolution too, with a signed code that
   *is* the image before tanh. Its l1 term pulls every pixel towards 0, mid-grey after tanh, so it
   fights a digit's -1 background; on the pixel-MSE yardstick (digits, lr 3e-3) it costs 1.5 dB
   against the synthesis over three seeds (benchmarks/RESULTS.md, "CSC-CTRL at least as good as
   CTRL?"). ``csc_options`` apply to every CSC layer, except that the end layers that are CSC layers
   (the features' always, the image's with ``image='code'``) take signed codes whatever they say.
4. A CSC layer whose code goes to the next CSC layer with no BN in between (``ctrl_dcgan32``'s first
   encoder layer: CTRL has no BN there) returns it in conv units (``units='conv'``: the code times
   ``||W_m|| / t``) unless ``csc_options`` name the units: in code units its output is ~``t`` (~0.1)
   times smaller than the conv's, and the next layer's ``lam`` then zeroes ~97% of its code at
   initialisation (41% non-zero in conv units; the other layers' codes are 33-49% non-zero).
5. The decoder reads ``sqrt(d) z`` (:class:`FeatureMap`, in CTRL too, where a BN follows and it
   changes nothing): unit-sphere features have entries ~``1/sqrt(d)`` and the first sparse
   deconvolution's code would be all zero at ``lam=0.1``.

Images: ``encode`` takes and ``decode`` returns images in the model's input units -- [-1, 1] for a
model as built here (CTRL's convention; ``pretrained_cfg`` says mean 0.5, std 0.5 so that normalising
[0, 1] images gives [-1, 1]). Once the model has an input normalisation
(:func:`csc_cli.set_input_normalization`, which :func:`csc_cli.load` applies when the file records
one), ``encode`` / ``model(x)`` take [0, 1] images and ``decode`` maps its tanh output back to [0, 1],
so ``encode(decode(z))`` -- the game's ``f(g(z))`` -- is right either way.

An untrained CSC-CTRL model in eval mode is degenerate: BN's initial running variance (1) is far
from the variance of fresh codes, the last encoder code is then all below ``lam`` and the features
are zero vectors, not unit ones. Train (or run training forwards) before evaluating;
:func:`check_trained` (which ``csc eval`` and ``csc inspect`` apply to an autoencoder file) refuses a
model whose BatchNorm layers have seen no data.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from .card import Edit
from .choices import CTRL_IMAGES
from .registry import create_model
from .surgery import card_of, convertible, edit_model, find_convs, input_normalization, to_csc_edit

__all__ = ["CTRLAutoencoder", "DownBlock", "UpBlock", "FeatureMap", "Sphere", "build_autoencoder", "is_autoencoder",
           "autoencoder_layout", "csc_ctrl_edits", "decoder_image", "untrained_norms", "check_trained", "AUTOENCODER_ARCHS", "CTRL_MEAN", "CTRL_STD"]

CTRL_MEAN = 0.5  # per channel: (x - 0.5) / 0.5 maps [0, 1] images to CTRL's [-1, 1]
CTRL_STD = 0.5
AUTOENCODER_ARCHS = ("ctrl_dcgan32", "ctrl_resnet")
RESNET_IMAGE_SIZES = (64, 128)
_CHANNEL_MULTIPLIERS = (1, 2, 4, 8, 8)  # ctrl_resnet's stage widths, in units of `width`
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)
_CSC_DEFAULTS = {"lam": 0.1, "steps": 2, "units": "code"}  # SDNet's layer


# ----------------------------------------------------------------------------- building blocks
class Sphere(nn.Module):
    """Flatten to ``(N, features)`` and l2-normalise each row onto the unit sphere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.flatten(1), dim=1, eps=1e-12)


class FeatureMap(nn.Module):
    """``(N, d) -> (N, d, 1, 1)``, times ``sqrt(d)``: the decoder's input. Features on the unit sphere
    have entries of size ``1/sqrt(d)``; scaled, they have the unit RMS of the BN'd maps every other
    layer reads, so a CSC layer's ``lam`` means the same at the decoder's input as anywhere else (at
    lam 0.1 an unscaled first sparse deconvolution has an all-zero code: dead). For CTRL it changes
    nothing: a BN follows the first transposed conv."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.feature_dim = feature_dim
        self.scale = math.sqrt(feature_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z * self.scale).view(z.shape[0], self.feature_dim, 1, 1)

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, scale=sqrt({self.feature_dim})"


class DownBlock(nn.Module):
    """``act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))``: a stride-2 residual block of convs.

    Children are registered in forward order up to the addition (conv1, bn1, act1, conv2, bn2,
    shortcut, act2): :func:`autoencoder_layout` reads "the activation after a conv" from that order."""

    def __init__(self, in_channels: int, out_channels: int, *, slope: float = 0.2):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.LeakyReLU(slope)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, 2, 0, bias=False),
                                      nn.BatchNorm2d(out_channels))
        self.act2 = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + self.shortcut(x))


class UpBlock(nn.Module):
    """``act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))`` with transposed convs only: conv1
    4x4/s2/p1 doubles the size, conv2 is 3x3/s1/p1, the shortcut a 2x2/s2 transposed conv + BN."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.ReLU()
        self.conv2 = nn.ConvTranspose2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 2, 2, 0, bias=False),
                                      nn.BatchNorm2d(out_channels))
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + self.shortcut(x))


# ----------------------------------------------------------------------------- the model
class CTRLAutoencoder(nn.Module):
    """An encoder ``f: images -> unit sphere in R^d`` and a decoder ``g: R^d -> images``.

    ``encode(x)``: ``(N, C, H, W) -> (N, d)`` unit-norm features (``forward`` is ``encode``);
    ``decode(z)``: ``(N, d) -> (N, C, H, W)`` images in [-1, 1] (tanh; in [0, 1] once the model has an
    input normalisation, see the module docstring); ``reconstruct(x) = decode(encode(x))``.
    ``encoder`` and ``decoder`` share no parameters. ``pretrained_cfg`` is timm's (architecture,
    input size, mean/std 0.5 that map [0, 1] images to [-1, 1], no classes)."""

    csc_task = "autoencoder"  # what csc_cli.create_model writes in the card's ``task``

    def __init__(self, encoder: nn.Module, decoder: nn.Module, *, arch: str, in_chans: int, feature_dim: int,
                 image_size: int, first_conv: str):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.in_chans = in_chans
        self.feature_dim = self.num_features = feature_dim
        self.image_size = image_size
        self.pretrained_cfg = self.default_cfg = {
            "architecture": arch, "input_size": (in_chans, image_size, image_size),
            "mean": (CTRL_MEAN,) * in_chans, "std": (CTRL_STD,) * in_chans, "num_classes": 0,
            "first_conv": first_conv, "classifier": "",
        }

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans or tuple(x.shape[2:]) != (self.image_size,) * 2:
            raise ValueError(f"{self.pretrained_cfg['architecture']} encodes (N, {self.in_chans}, {self.image_size}, "
                             f"{self.image_size}) images, got {tuple(x.shape)}")
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the model's input normalisation (if any) already ran as a forward pre-hook
        return self._features(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` images -> ``(N, feature_dim)`` features of unit l2 norm."""
        norm = input_normalization(self)
        return self._features(norm(x) if norm is not None else x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, feature_dim)`` features -> ``(N, C, H, W)`` images in the units ``encode`` takes."""
        if z.dim() != 2 or z.shape[1] != self.feature_dim:
            raise ValueError(f"decode takes (N, {self.feature_dim}) features, got {tuple(z.shape)}")
        images = self.decoder(z)
        norm = input_normalization(self)
        if norm is not None:  # undo the input normalisation: the output is in the input's units
            images = images * norm.std.to(images.dtype) + norm.mean.to(images.dtype)
        return images

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def is_autoencoder(model: nn.Module) -> bool:
    """Whether ``model`` is an encoder/decoder pair (its card says ``task='autoencoder'``)."""
    card = getattr(model, "csc_card", None)
    if card is not None:
        return card.task == "autoencoder"
    return getattr(model, "csc_task", None) == "autoencoder"


def untrained_norms(model: nn.Module) -> List[str]:
    """The BatchNorm layers of ``model`` that have normalised no training batch yet: their running
    statistics are still the initial mean 0 and variance 1 (``num_batches_tracked == 0``)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_batches_tracked is not None
            and int(m.num_batches_tracked) == 0]


def check_trained(model: nn.Module, name: str) -> None:
    """Refuse (``ValueError``, one line) an autoencoder whose BatchNorm layers have seen no data: in
    eval mode its features mean nothing (all zero for CSC-CTRL; see the module docstring)."""
    unseen = untrained_norms(model)
    if unseen:
        card = getattr(model, "csc_card", None)
        dataset = card.data.dataset if card is not None and card.data.dataset else "DATASET"
        raise ValueError(f"{name} is an untrained autoencoder: {len(unseen)} BatchNorm layer(s) (e.g. {unseen[0]}) "
                         f"have seen no data, so its eval-mode features are meaningless (zero for CSC-CTRL); "
                         f"train it first: csc train {dataset} --init {name}")


# ----------------------------------------------------------------------------- the architectures
def _dcgan32(in_chans: int, feature_dim: int, width: int = 64) -> Tuple[nn.Module, nn.Module]:
    w1, w2, w4 = width, 2 * width, 4 * width  # CTRL: 64, 128, 256
    lrelu = lambda: nn.LeakyReLU(0.2)  # noqa: E731
    encoder = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_chans, w1, 4, 2, 1, bias=False)), ("act1", lrelu()),
        ("conv2", nn.Conv2d(w1, w2, 4, 2, 1, bias=False)), ("bn2", nn.BatchNorm2d(w2)), ("act2", lrelu()),
        ("conv3", nn.Conv2d(w2, w4, 4, 2, 1, bias=False)), ("bn3", nn.BatchNorm2d(w4)), ("act3", lrelu()),
        ("conv4", nn.Conv2d(w4, feature_dim, 4, 1, 0, bias=False)), ("sphere", Sphere()),
    ]))
    decoder = nn.Sequential(OrderedDict([
        ("feature_map", FeatureMap(feature_dim)),
        ("deconv1", nn.ConvTranspose2d(feature_dim, w4, 4, 1, 0, bias=False)), ("bn1", nn.BatchNorm2d(w4)),
        ("act1", nn.ReLU()),
        ("deconv2", nn.ConvTranspose2d(w4, w2, 4, 2, 1, bias=False)), ("bn2", nn.BatchNorm2d(w2)),
        ("act2", nn.ReLU()),
        ("deconv3", nn.ConvTranspose2d(w2, w1, 4, 2, 1, bias=False)), ("bn3", nn.BatchNorm2d(w1)),
        ("act3", nn.ReLU()),
        ("deconv4", nn.ConvTranspose2d(w1, in_chans, 4, 2, 1, bias=False)), ("tanh", nn.Tanh()),
    ]))
    return encoder, decoder


def _resnet(in_chans: int, feature_dim: int, image_size: int, width: int) -> Tuple[nn.Module, nn.Module]:
    stages = int(math.log2(image_size // 4))  # one halving per stage, down to 4x4
    channels = [width * m for m in _CHANNEL_MULTIPLIERS[:stages]]
    enc: "OrderedDict[str, nn.Module]" = OrderedDict()
    previous = in_chans
    for i, out in enumerate(channels):
        enc[f"block{i + 1}"] = DownBlock(previous, out)
        previous = out
    enc["conv_out"] = nn.Conv2d(previous, feature_dim, 4, 1, 0, bias=False)
    enc["sphere"] = Sphere()
    dec: "OrderedDict[str, nn.Module]" = OrderedDict()
    dec["feature_map"] = FeatureMap(feature_dim)
    dec["conv_in"] = nn.ConvTranspose2d(feature_dim, channels[-1], 4, 1, 0, bias=False)
    dec["bn_in"] = nn.BatchNorm2d(channels[-1])
    dec["act_in"] = nn.ReLU()
    previous = channels[-1]
    for i, out in enumerate(list(reversed(channels[:-1])) + [width]):  # the encoder's stages, mirrored
        dec[f"block{i + 1}"] = UpBlock(previous, out)
        previous = out
    dec["conv_out"] = nn.ConvTranspose2d(previous, in_chans, 3, 1, 1, bias=False)
    dec["tanh"] = nn.Tanh()
    return nn.Sequential(enc), nn.Sequential(dec)


def _int_arg(name: str, value: Any, arch: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{arch}: {name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _factory_kwargs(arch: str, pretrained: bool, kwargs: Dict[str, Any], allowed: Tuple[str, ...]) -> Dict[str, Any]:
    if pretrained:
        raise ValueError(f"{arch} has no pretrained weights: train it")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's plumbing
        kwargs.pop(key, None)
    unknown = set(kwargs) - set(allowed)
    if unknown:
        raise ValueError(f"{arch} takes {', '.join(allowed)}; not {', '.join(sorted(unknown))}")
    return kwargs


def _finish(model: CTRLAutoencoder, arch: str, kwargs: Dict[str, Any]) -> CTRLAutoencoder:
    # A card naming every argument, so that a model timm built directly saves and reloads exactly
    # (csc_cli.create_model replaces it with one recording the arguments it was given).
    from .card import ModelCard

    model.csc_card = ModelCard(arch=arch, model_kwargs=dict(kwargs), task="autoencoder")
    return model


@register_model
def ctrl_dcgan32(pretrained: bool = False, **kwargs: Any) -> CTRLAutoencoder:
    """CTRL's 32x32 DCGAN-like encoder/decoder pair (bias-free); ``in_chans`` 1 or 3,
    ``feature_dim`` d (128), ``width`` (64: CTRL's 64/128/256 channels; w gives w/2w/4w)."""
    arch = "ctrl_dcgan32"
    kwargs = _factory_kwargs(arch, pretrained, kwargs, ("in_chans", "feature_dim", "width"))
    in_chans = _int_arg("in_chans", kwargs.get("in_chans", 3), arch, 1, 4)
    feature_dim = _int_arg("feature_dim", kwargs.get("feature_dim", 128), arch, 1, 1 << 16)
    width = _int_arg("width", kwargs.get("width", 64), arch, 1, 1024)
    encoder, decoder = _dcgan32(in_chans, feature_dim, width)
    model = CTRLAutoencoder(encoder, decoder, arch=arch, in_chans=in_chans, feature_dim=feature_dim, image_size=32,
                            first_conv="encoder.conv1")
    kwargs = {"in_chans": in_chans, "feature_dim": feature_dim}
    if width != 64:  # a model timm builds at CTRL's width keeps the card it had before the option existed
        kwargs["width"] = width
    return _finish(model, arch, kwargs)


@register_model
def ctrl_resnet(pretrained: bool = False, **kwargs: Any) -> CTRLAutoencoder:
    """A residual encoder/decoder pair for 64 or 128 px images (``image_size``, default 128), in the
    spirit of SNGAN-128's discriminator/generator; ``in_chans``, ``feature_dim`` d (128),
    ``width`` (32: stages of 32..256 channels)."""
    arch = "ctrl_resnet"
    kwargs = _factory_kwargs(arch, pretrained, kwargs, ("in_chans", "feature_dim", "image_size", "width"))
    in_chans = _int_arg("in_chans", kwargs.get("in_chans", 3), arch, 1, 4)
    feature_dim = _int_arg("feature_dim", kwargs.get("feature_dim", 128), arch, 1, 1 << 16)
    image_size = kwargs.get("image_size", 128)
    if image_size not in RESNET_IMAGE_SIZES or isinstance(image_size, bool):
        raise ValueError(f"{arch}: image_size must be one of {', '.join(map(str, RESNET_IMAGE_SIZES))}, "
                         f"got {image_size!r}")
    width = _int_arg("width", kwargs.get("width", 32), arch, 1, 1024)
    encoder, decoder = _resnet(in_chans, feature_dim, image_size, width)
    model = CTRLAutoencoder(encoder, decoder, arch=arch, in_chans=in_chans, feature_dim=feature_dim,
                            image_size=image_size, first_conv="encoder.block1.conv1")
    return _finish(model, arch, {"in_chans": in_chans, "feature_dim": feature_dim, "image_size": image_size,
                                 "width": width})


# ----------------------------------------------------------------------------- CTRL / CSC-CTRL
def autoencoder_layout(model: nn.Module) -> Dict[str, List[str]]:
    """What ``csc='all'`` edits, by module name: ``convs`` (every conv and transposed conv, in
    order), ``ends`` (the last encoder conv and the last decoder conv: signed codes when they are CSC
    layers -- the decoder's stays a conv with ``image='synthesis'`` -- and what follows them kept), ``activations`` (the activation right after each other conv, after its BN when it
    has one: these become identities) and ``unnormalized`` (the other convs with no BN after them:
    conv units). Read from the registration order of each container, which is forward order in
    these architectures up to a residual addition."""
    convs = [name for name, _, kind, _ in find_convs(model) if kind == "csc" or convertible(kind)]
    ends = []
    for part in ("encoder", "decoder"):
        mine = [n for n in convs if n.startswith(part + ".")]
        if not mine:
            raise ValueError(f"the model has no convolution in its {part}")
        ends.append(mine[-1])
    activations: List[str] = []
    unnormalized: List[str] = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for i, (name, _) in enumerate(children):
            full = f"{parent_name}.{name}" if parent_name else name
            if full not in convs or full in ends:
                continue
            j = i + 1
            if j < len(children) and isinstance(children[j][1], nn.modules.batchnorm._BatchNorm):
                j += 1
            else:
                unnormalized.append(full)
            if j < len(children) and isinstance(children[j][1], _ACTIVATIONS):
                activations.append(f"{parent_name}.{children[j][0]}" if parent_name else children[j][0])
    return {"convs": convs, "ends": ends, "activations": activations, "unnormalized": unnormalized}


def build_autoencoder(arch: str, in_chans: int = 3, feature_dim: int = 128, csc: str = "all",
                      image_size: Optional[int] = None, width: Optional[int] = None, image: str = "synthesis",
                      **csc_options: Any) -> CTRLAutoencoder:
    """CTRL's autoencoder (``csc='none'``) or CSC-CTRL's (``csc='all'``): see the module docstring
    for the layers and the design choices. ``image_size`` is ``ctrl_resnet``'s, ``width`` both's;
    ``image`` is how CSC-CTRL's decoder makes the image: ``'synthesis'`` (the last layer stays a
    transposed conv, ``x = D_1 z_1``) or ``'code'`` (a sparse deconvolution whose signed code is the
    image: the layout before issue 30). ``csc_options`` (``lam``, ``steps``, ``nonneg``, ``units``...)
    go to every CSC layer (defaults ``lam=0.1, steps=2, units='code'``), except that an end that is a
    CSC layer is always signed. The model's card says ``task='autoencoder'`` and names the image stage in its
    notes (``decoder_image``); its edit log rebuilds it on load."""
    if arch not in AUTOENCODER_ARCHS:
        raise ValueError(f"unknown autoencoder {arch!r}; choose one of {', '.join(AUTOENCODER_ARCHS)}")
    if csc not in ("all", "none"):
        raise ValueError(f"csc must be 'all' (CSC-CTRL) or 'none' (CTRL), got {csc!r}")
    if image not in CTRL_IMAGES:
        raise ValueError(f"image must be one of {', '.join(CTRL_IMAGES)}, got {image!r}")
    if csc == "none" and (csc_options or image != "synthesis"):
        extra = sorted(csc_options) + (["image"] if image != "synthesis" else [])
        raise ValueError(f"CSC options {extra} need csc='all'")
    kwargs: Dict[str, Any] = {"in_chans": in_chans, "feature_dim": feature_dim}
    if arch == "ctrl_resnet":
        kwargs.update(image_size=image_size, width=width)
    else:
        if image_size not in (None, 32):
            raise ValueError(f"{arch} is 32x32: image_size is ctrl_resnet's")
        if width is not None:
            kwargs["width"] = width
    model = create_model(arch, **kwargs)
    card = card_of(model)
    card.task = "autoencoder"
    if csc == "none":
        return model
    for edit in csc_ctrl_edits(model, image, **csc_options):
        edit_model(model, edit)
    card.notes["decoder_image"] = image
    return model


def csc_ctrl_edits(model: nn.Module, image: str = "synthesis", **csc_options: Any) -> List[Edit]:
    """The edits that make the CTRL pair ``model`` CSC-CTRL (design choices 1-4 of the module
    docstring), in order: a ``to_csc`` edit per conv (the image's transposed conv left out with
    ``image='synthesis'``), then an ``identity`` edit per activation after a converted conv. Each
    ``to_csc`` edit's ``options`` is that layer's, so a caller may change one before applying them."""
    layout = autoencoder_layout(model)
    options = {**_CSC_DEFAULTS, **csc_options}
    edits = []
    for name in layout["convs"]:
        if name == layout["ends"][1] and image == "synthesis":
            continue  # x = D_1 z_1: the last transposed conv is the synthesis by the dictionary D_1
        layer_options = dict(options)
        if name in layout["ends"]:
            layer_options["nonneg"] = False
        elif name in layout["unnormalized"] and "units" not in csc_options:
            layer_options["units"] = "conv"
        edits.append(to_csc_edit(model.get_submodule(name), name, **layer_options))
    return edits + [Edit("identity", name) for name in layout["activations"]]


def decoder_image(model: nn.Module) -> Optional[str]:
    """How a CSC-CTRL model's decoder makes the image: ``'synthesis'`` (its last layer a transposed
    conv), ``'code'`` (a sparse deconvolution: models before issue 30), or None for CTRL (no CSC)."""
    from .layers import CSCConvNd

    modules = [m for m in model.decoder.modules() if isinstance(m, (CSCConvNd, nn.ConvTranspose2d))]
    if not any(isinstance(m, CSCConvNd) for m in model.modules()):
        return None
    return "code" if modules and isinstance(modules[-1], CSCConvNd) else "synthesis"
