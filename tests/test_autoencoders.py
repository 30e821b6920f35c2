"""CTRL / CSC-CTRL autoencoders: shapes, the CSC surgery (and its ends), separate parameters,
gradients, and model files that rebuild them exactly and say they are autoencoders."""

import pytest
import timm
import torch
import torch.nn as nn

import csc_cli
from csc_cli import CSCConv2d, CSCConvTranspose2d
from csc_cli.autoencoders import CTRLAutoencoder, FeatureMap, Sphere, autoencoder_layout, decoder_image
from csc_cli.layers import CSCConvNd
from csc_cli.models import build_autoencoder, build_model, create_model, is_autoencoder
from csc_cli.surgery import card_of, sync_card

# ctrl_resnet kept small so the CSC versions run in a second on a CPU
SMALL_RESNET = dict(image_size=64, width=8, feature_dim=16)
ARCHS = [("ctrl_dcgan32", {}, 32), ("ctrl_resnet", SMALL_RESNET, 64)]


def count(module):
    return sum(p.numel() for p in module.parameters())


def images(n, channels, size, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def convs(module, classes, prefix=""):
    return [prefix + name for name, m in module.named_modules() if type(m) in classes]


def calibrate(model, x):
    """BatchNorm's running statistics set to ``x``'s batch statistics (one training forward), so an
    untrained model behaves in eval mode as it does in training: a fresh CSC model's codes are much
    smaller than BN's initial running variance of 1 assumes, and its eval features would be zero."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        model.decode(model.encode(x))
    return model.eval()


@pytest.mark.parametrize("arch, kwargs, size", ARCHS)
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("csc", ["none", "all"])
def test_shapes_sphere_and_image_range(arch, kwargs, size, in_chans, csc):
    torch.manual_seed(0)
    model = build_autoencoder(arch, in_chans=in_chans, csc=csc, **kwargs)
    d = kwargs.get("feature_dim", 128)
    assert (model.in_chans, model.feature_dim, model.image_size) == (in_chans, d, size)
    x = images(4, in_chans, size)
    for mode in (model.train, lambda: calibrate(model, x)):
        mode()
        z = model.encode(x)
        assert z.shape == (4, d)
        torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
        if not model.training:  # (a training forward refreshes the CSC step sizes)
            assert torch.equal(model(x), z)  # forward is encode
        y = model.decode(z)
        assert y.shape == (4, in_chans, size, size)
        assert y.min() >= -1 and y.max() <= 1 and y.min() < 0 < y.max()  # tanh, signed
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == arch and cfg["input_size"] == (in_chans, size, size) and cfg["num_classes"] == 0
    assert cfg["mean"] == (0.5,) * in_chans and cfg["std"] == (0.5,) * in_chans  # [0, 1] -> [-1, 1]


def test_dcgan32_is_ctrls_layer_table():
    model = build_autoencoder("ctrl_dcgan32", csc="none")
    enc, dec = model.encoder, model.decoder
    geometry = [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.bias is None)
                for m in (enc.conv1, enc.conv2, enc.conv3, enc.conv4)]
    assert geometry == [(3, 64, (4, 4), (2, 2), (1, 1), True), (64, 128, (4, 4), (2, 2), (1, 1), True),
                        (128, 256, (4, 4), (2, 2), (1, 1), True), (256, 128, (4, 4), (1, 1), (0, 0), True)]
    geometry = [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.bias is None)
                for m in (dec.deconv1, dec.deconv2, dec.deconv3, dec.deconv4)]
    assert geometry == [(128, 256, (4, 4), (1, 1), (0, 0), True), (256, 128, (4, 4), (2, 2), (1, 1), True),
                        (128, 64, (4, 4), (2, 2), (1, 1), True), (64, 3, (4, 4), (2, 2), (1, 1), True)]
    assert list(enc._modules) == ["conv1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "conv4", "sphere"]
    assert list(dec._modules) == ["feature_map", "deconv1", "bn1", "act1", "deconv2", "bn2", "act2", "deconv3", "bn3",
                                  "act3", "deconv4", "tanh"]
    assert isinstance(enc.act1, nn.LeakyReLU) and enc.act1.negative_slope == 0.2 and isinstance(dec.act1, nn.ReLU)


@pytest.mark.parametrize("arch, kwargs, expected", [
    ("ctrl_dcgan32", dict(in_chans=3), (1_183_488, 1_183_616)),
    ("ctrl_dcgan32", dict(in_chans=1), (1_181_440, 1_181_568)),
    ("ctrl_resnet", dict(in_chans=3), (2_988_288, 3_512_672)),  # 128 px, width 32
    ("ctrl_resnet", dict(in_chans=3, image_size=64), (1_741_568, 1_610_592)),
])
def test_parameter_counts(arch, kwargs, expected):
    plain = build_autoencoder(arch, csc="none", **kwargs)
    assert (count(plain.encoder), count(plain.decoder)) == expected
    assert count(plain) == sum(expected)


@pytest.mark.parametrize("arch, kwargs, size", ARCHS)
def test_csc_has_exactly_the_conv_weights(arch, kwargs, size):
    plain = build_autoencoder(arch, csc="none", **kwargs)
    sparse = build_autoencoder(arch, csc="all", **kwargs)
    assert count(sparse.encoder) == count(plain.encoder) and count(sparse.decoder) == count(plain.decoder)
    assert [(n, p.shape) for n, p in sparse.named_parameters()] == [(n, p.shape) for n, p in plain.named_parameters()]


@pytest.mark.parametrize("arch, kwargs, size", ARCHS)
@pytest.mark.parametrize("image", ["synthesis", "code"])
def test_csc_all_converts_every_conv_and_keeps_the_ends(arch, kwargs, size, image):
    """Every conv a CSC layer, the image's layer aside: with image='synthesis' (the default) the last
    transposed conv stays one (x = D_1 z_1); with 'code' it is a sparse deconvolution too."""
    plain = build_autoencoder(arch, csc="none", **kwargs)
    model = build_autoencoder(arch, csc="all", image=image, **kwargs)
    assert model is not None and build_autoencoder(arch, csc="all", **kwargs).csc_card.notes == {
        "decoder_image": "synthesis"}
    encoder_convs = convs(plain.encoder, {nn.Conv2d}, "encoder.")
    decoder_convs = convs(plain.decoder, {nn.ConvTranspose2d}, "decoder.")
    assert encoder_convs and decoder_convs and not convs(plain.encoder, {nn.ConvTranspose2d})
    assert convs(model.encoder, {CSCConv2d}, "encoder.") == encoder_convs
    sparse_decoder = decoder_convs if image == "code" else decoder_convs[:-1]
    assert convs(model.decoder, {CSCConvTranspose2d}, "decoder.") == sparse_decoder
    # nothing else left unconverted; the synthesis is the plain transposed conv CTRL has there
    assert convs(model, {nn.Conv2d, nn.ConvTranspose2d}) == ([] if image == "code" else decoder_convs[-1:])
    assert model.csc_card.notes["decoder_image"] == image and decoder_image(model) == image
    assert decoder_image(plain) is None

    if arch == "ctrl_dcgan32":
        ends = ("encoder.conv4", "decoder.deconv4")
        inner = ["encoder.act1", "encoder.act2", "encoder.act3", "decoder.act1", "decoder.act2", "decoder.act3"]
        kept = []
    else:
        ends = ("encoder.conv_out", "decoder.conv_out")
        inner = [f"encoder.block{i}.act1" for i in range(1, 5)] + ["decoder.act_in"] + [
            f"decoder.block{i}.act1" for i in range(1, 5)]
        kept = [f"{part}.block{i}.act2" for part in ("encoder", "decoder") for i in range(1, 5)]  # after "+"
    identities = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Identity))
    assert identities == sorted(inner)
    for name in inner:
        assert isinstance(plain.get_submodule(name), (nn.ReLU, nn.LeakyReLU))
    for name in kept:
        assert isinstance(model.get_submodule(name), (nn.ReLU, nn.LeakyReLU))
    # the ends: signed codes, and what follows them is still there
    assert isinstance(model.encoder.sphere, Sphere) and isinstance(model.decoder.tanh, nn.Tanh)
    assert isinstance(model.decoder.feature_map, FeatureMap)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, CSCConvNd)}
    for name, layer in layers.items():
        assert layer.nonneg == (name not in ends), name
        assert (float(layer.lam), layer.steps) == (pytest.approx(0.1), 2)
    # CTRL has no BN after its first layer: that code reaches the next CSC layer in conv units
    unnormalized = ["encoder.conv1"] if arch == "ctrl_dcgan32" else []
    assert [n for n, m in layers.items() if m.units == "conv"] == unnormalized
    # the card's edit log holds every change, in order
    card = model.csc_card
    assert card.task == "autoencoder" and card.arch == arch
    assert [e.target for e in card.edits if e.op == "to_csc"] == encoder_convs + sparse_decoder
    assert sorted(e.target for e in card.edits if e.op == "identity") == sorted(inner)
    assert len(card.edits) == len(encoder_convs) + len(sparse_decoder) + len(inner)


@pytest.mark.parametrize("image", ["synthesis", "code"])
def test_csc_options_reach_every_layer_but_the_ends_stay_signed(image):
    model = build_autoencoder("ctrl_dcgan32", csc="all", image=image, lam=0.2, steps=3, nonneg=True, units="code")
    layers = {name: layer for name, layer in model.named_modules() if isinstance(layer, CSCConvNd)}
    assert len(layers) == (8 if image == "code" else 7)
    for name, layer in layers.items():
        assert (float(layer.lam), layer.steps, layer.units) == (pytest.approx(0.2), 3, "code")
        assert layer.nonneg == (name not in ("encoder.conv4", "decoder.deconv4"))


def test_codes_are_alive_at_initialisation():
    """lam 0.1 must not zero whole layers: the decoder reads sqrt(d) z, and the dcgan's first encoder
    code (no BN after it) is in conv units."""
    torch.manual_seed(0)
    for arch, kwargs, size in ARCHS:
        model = build_autoencoder(arch, csc="all", **kwargs).train()
        density = {}
        for name, layer in model.named_modules():
            if isinstance(layer, CSCConvNd):
                layer.register_forward_hook(lambda m, i, o, n=name: density.__setitem__(n, (o != 0).float().mean()))
        with torch.no_grad():
            model.decode(model.encode(images(8, 3, size)))
        assert len(density) == len(convs(model, {CSCConv2d, CSCConvTranspose2d}))
        assert min(density.values()) > 0.2, density


@pytest.mark.parametrize("arch, kwargs, size", ARCHS)
@pytest.mark.parametrize("csc", ["none", "all"])
def test_separate_parameters_and_gradients_reach_both(arch, kwargs, size, csc):
    torch.manual_seed(0)
    model = build_autoencoder(arch, csc=csc, **kwargs).train()
    encoder, decoder = set(map(id, model.encoder.parameters())), set(map(id, model.decoder.parameters()))
    assert encoder and decoder and not encoder & decoder
    assert encoder | decoder == set(map(id, model.parameters()))  # nothing outside the pair
    z = model.encode(images(4, 3, size))
    loss = model.decode(z).square().mean() + (z @ z.T).square().mean()
    loss.backward()
    for part in (model.encoder, model.decoder):
        for name, p in part.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def _roundtrip(model, size, path, **info):
    x = images(4, model.in_chans, size, seed=1)
    calibrate(model, x)  # BN statistics and step sizes move off their initial values
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x).norm(dim=1), torch.ones(4))  # a meaningful comparison
    csc_cli.save(model, path, **info)
    return x, csc_cli.load(path)


@pytest.mark.parametrize("arch, kwargs, size", ARCHS)
@pytest.mark.parametrize("csc, image", [("none", "synthesis"), ("all", "synthesis"), ("all", "code")])
def test_model_file_round_trip(tmp_path, arch, kwargs, size, csc, image):
    torch.manual_seed(0)
    model = build_autoencoder(arch, in_chans=3, csc=csc, **({"image": image} if csc == "all" else {}), **kwargs)
    x, loaded = _roundtrip(model, size, tmp_path / "ae.safetensors")
    assert isinstance(loaded, CTRLAutoencoder) and not loaded.training
    card = loaded.csc_card
    assert card.task == "autoencoder" and csc_cli.read_card(tmp_path / "ae.safetensors").task == "autoencoder"
    assert card.arch == arch and card.model_kwargs == {"in_chans": 3, "feature_dim": kwargs.get("feature_dim", 128),
                                                        **({} if arch == "ctrl_dcgan32" else
                                                           {"image_size": size, "width": kwargs["width"]})}
    assert [e.to_dict() for e in card.edits] == [e.to_dict() for e in sync_card(model).edits]
    assert len(card.edits) == len(model.csc_card.edits) and (csc == "none") == (not card.edits)
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in model.modules()]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        z = model.encode(x)
        assert torch.equal(loaded.encode(x), z)
        assert torch.equal(loaded.decode(z), model.decode(z))
    assert is_autoencoder(loaded)
    assert decoder_image(loaded) == (None if csc == "none" else image)
    assert card.notes == ({} if csc == "none" else {"decoder_image": image})
    # saved again, it is the same file's card
    csc_cli.save(loaded, tmp_path / "again.safetensors")
    assert csc_cli.read_card(tmp_path / "again.safetensors").to_document() == card.to_document()


def test_loaded_with_normalization_takes_and_gives_images_in_0_1(tmp_path):
    torch.manual_seed(0)
    model = build_autoencoder("ctrl_dcgan32", in_chans=1, csc="all")
    x, loaded = _roundtrip(model, 32, tmp_path / "ae.safetensors", normalization={"mean": [0.5], "std": [0.5]},
                           dataset="digits", input_size=[1, 32, 32])
    unit = (x + 1) / 2  # the same images in [0, 1]
    with torch.no_grad():
        z = model.encode(x)
        torch.testing.assert_close(loaded.encode(unit), z)
        torch.testing.assert_close(loaded(unit), z)  # forward: through the model's input pre-hook, once
        torch.testing.assert_close(loaded.decode(z), (model.decode(z) + 1) / 2)
        y = loaded.reconstruct(unit)
    assert y.min() >= 0 and y.max() <= 1


def test_registered_with_timm_and_card_of_works():
    for arch in ("ctrl_dcgan32", "ctrl_resnet"):
        assert timm.is_model(arch)
    model = timm.create_model("ctrl_resnet", image_size=64, width=8, feature_dim=16, in_chans=1)
    card = card_of(model)
    assert card.arch == "ctrl_resnet" and card.task == "autoencoder"
    assert card.model_kwargs == {"in_chans": 1, "feature_dim": 16, "image_size": 64, "width": 8}
    assert create_model("ctrl_dcgan32").csc_card.task == "autoencoder"
    assert create_model("ctrl_dcgan32", feature_dim=64).csc_card.model_kwargs == {"feature_dim": 64}
    classifier = build_model("resnet20_cifar", 10, csc="none")
    assert classifier.csc_card.task == "classifier" and not is_autoencoder(classifier)


def test_bad_requests():
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("ctrl_dcgan32", pretrained=True)
    with pytest.raises(ValueError, match="image_size must be one of 64, 128"):
        build_autoencoder("ctrl_resnet", image_size=96)
    with pytest.raises(ValueError, match="ctrl_resnet's"):
        build_autoencoder("ctrl_dcgan32", image_size=64)
    with pytest.raises(ValueError, match="csc must be"):
        build_autoencoder("ctrl_dcgan32", csc="stem")
    with pytest.raises(ValueError, match="need csc='all'"):
        build_autoencoder("ctrl_dcgan32", csc="none", lam=0.2)
    with pytest.raises(ValueError, match=r"CSC options \['image'\] need csc='all'"):
        build_autoencoder("ctrl_dcgan32", csc="none", image="code")
    with pytest.raises(ValueError, match="image must be one of synthesis, code"):
        build_autoencoder("ctrl_dcgan32", image="pixels")
    with pytest.raises(ValueError, match="unknown autoencoder"):
        build_autoencoder("resnet18_cifar")
    with pytest.raises(ValueError, match="unsupported model argument"):
        create_model("ctrl_dcgan32", num_layers=3)
    with pytest.raises(ValueError, match="takes in_chans, feature_dim"):
        create_model("ctrl_dcgan32", num_classes=10)
    model = build_autoencoder("ctrl_dcgan32", csc="none")
    with pytest.raises(ValueError, match=r"encodes \(N, 3, 32, 32\) images"):
        model.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"decode takes \(N, 128\) features"):
        model.decode(torch.zeros(1, 64))


def test_layout_names_what_csc_all_edits():
    layout = autoencoder_layout(build_autoencoder("ctrl_dcgan32", csc="none"))
    assert layout["ends"] == ["encoder.conv4", "decoder.deconv4"]
    assert layout["unnormalized"] == ["encoder.conv1"]
    assert layout["activations"] == ["encoder.act1", "encoder.act2", "encoder.act3", "decoder.act1", "decoder.act2",
                                     "decoder.act3"]


@pytest.mark.parametrize("csc", ["all", "none"])
def test_an_untrained_autoencoder_is_recognised_and_refused(csc, tmp_path):
    """A freshly built CSC-CTRL model's eval features are zero (BatchNorm's initial running variance);
    its BatchNorm layers are the untrained ones, check_trained refuses it in one line that says what
    to do, and a model whose BatchNorm layers have seen data passes -- also once saved and loaded."""
    from csc_cli.autoencoders import check_trained, untrained_norms

    torch.manual_seed(0)
    model = build_autoencoder("ctrl_dcgan32", in_chans=1, feature_dim=8, csc=csc)
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert untrained_norms(model) == norms and norms
    x = images(8, 1, 32)
    if csc == "all":
        assert torch.count_nonzero(model.eval().encode(x)) == 0  # the degenerate state being refused
    path = csc_cli.save(model, tmp_path / "fresh.safetensors", dataset="digits")
    with pytest.raises(ValueError, match=r"untrained autoencoder.*csc train digits --init") as info:
        check_trained(csc_cli.load(path), str(path))
    assert "\n" not in str(info.value)
    calibrate(model, x)  # a training forward: BatchNorm has seen data (exactly x's statistics)
    assert untrained_norms(model) == []
    check_trained(model.eval(), "trained")
    assert torch.count_nonzero(model.encode(x)) > 0
    check_trained(csc_cli.load(csc_cli.save(model, tmp_path / "seen.safetensors")), "seen")
