"""SDNet architectures: the paper's parameter counts and layer structure."""

import pytest
import timm
import torch
import torch.nn as nn

from csc_cli import CSCConv2d
from csc_cli.models import build_model


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "arch, classes, csc, shortcut, expected",
    [
        ("resnet18_cifar", 10, "none", True, 11_173_962),  # ResNet-18, CIFAR-10 (PAPER.md)
        ("resnet18_cifar", 10, "stem", True, 11_173_962),  # SDNet-18: same count
        ("resnet18_cifar", 10, "all", True, 11_173_962),  # SDNet-18-All
        ("resnet18_cifar", 10, "all", False, 11_000_138),  # no-shortcut SDNet-18-All (PAPER.md)
        ("resnet18", 1000, "stem", True, 11_689_512),  # ImageNet SDNet-18 (PAPER.md)
        ("resnet20_cifar", 10, "none", True, 272_474),  # He et al.'s ResNet-20
    ],
)
def test_parameter_counts(arch, classes, csc, shortcut, expected):
    assert count(build_model(arch, classes, csc=csc, shortcut=shortcut)) == expected


def test_sdnet18_structure():
    m = build_model("resnet18_cifar", 10, csc="stem")
    assert isinstance(m.conv1, CSCConv2d) and m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.act1, nn.Identity)  # the non-negative code is the nonlinearity
    assert sum(isinstance(x, CSCConv2d) for x in m.modules()) == 1
    assert (m.conv1.steps, float(m.conv1.lam), m.conv1.nonneg) == (2, pytest.approx(0.1), True)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_sdnet18_all_structure():
    m = build_model("resnet18_cifar", 10, csc="all")
    block = m.layer2[0]
    assert isinstance(block.conv1, CSCConv2d) and isinstance(block.conv2, CSCConv2d)
    assert isinstance(block.act1, nn.Identity) and isinstance(block.act2, nn.ReLU)
    assert isinstance(block.downsample[0], nn.Conv2d) and not isinstance(block.downsample[0], CSCConv2d)
    assert sum(isinstance(x, CSCConv2d) for x in m.modules()) == 17
    plain = build_model("resnet18_cifar", 10, csc="all", shortcut=False)
    assert plain.layer2[0].downsample is None and isinstance(plain.layer2[0].act2, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    assert plain(x).shape == (2, 10)


def test_imagenet_all_turns_the_max_pool_into_a_strided_csc_layer():
    m = build_model("resnet18", 1000, csc="all")
    assert isinstance(m.maxpool, CSCConv2d) and m.maxpool.stride == (2, 2) and m.maxpool.in_channels == 64
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_cifar_resnets_are_in_timms_registry():
    for name in ("resnet18_cifar", "resnet34_cifar", "resnet20_cifar"):
        assert timm.is_model(name)
        m = timm.create_model(name, num_classes=5)
        assert m.pretrained_cfg["input_size"] == (3, 32, 32)
        m.reset_classifier(7)
        assert m.forward_head(m.forward_features(torch.randn(1, 3, 32, 32))).shape == (1, 7)


def test_bad_model_requests():
    with pytest.raises(ValueError, match="csc must be"):
        build_model("resnet18_cifar", 10, csc="half")
    with pytest.raises(ValueError, match="with csc='all'"):
        build_model("resnet18_cifar", 10, csc="stem", shortcut=False)
    with pytest.raises(ValueError, match="CIFAR ResNet"):
        build_model("resnet18", 10, csc="all", shortcut=False)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("resnet18_cifar", 10, pretrained=True)


def test_resnet18_on_small_images_means_the_papers_cifar_layout():
    """`csc train cifar10 --arch resnet18` is SDNet-18 of the paper (CIFAR layout), with a note saying
    so; timm's ImageNet layout stays available as timm:resnet18, and 224 px images keep the name."""
    from csc_cli.models import resolve_arch

    arch, note = resolve_arch("resnet18", 32)
    assert arch == "resnet18_cifar" and "timm:resnet18" in note
    assert resolve_arch("resnet34", 16)[0] == "resnet34_cifar"
    assert resolve_arch("timm:resnet18", 32) == ("resnet18", None)
    assert resolve_arch("resnet18", 224) == ("resnet18", None)
    assert resolve_arch("resnet20_cifar", 32) == ("resnet20_cifar", None)
    assert sum(p.numel() for p in build_model(arch, 10, csc="stem").parameters()) == 11_173_962
