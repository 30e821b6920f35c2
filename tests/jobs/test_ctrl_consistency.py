"""Sample-wise consistency in the CTRL game (csc_cli.jobs.autoencoder.train.GameStep): the pixel and
feature terms are departures from the paper's game that act on the decoder only, linearly in their
weights; BatchNorm's running statistics see real images only; and a short CSC-CTRL run with the pixel
term forms reconstructions: it beats the mean-image yardstick on the test digits by a margin derived
from its own run-to-run spread over seeds."""

import copy
import math
import statistics

import pytest
import torch

from csc_cli.autoencoders import build_autoencoder
from csc_cli.data import load_dataset
from csc_cli.jobs.autoencoder.train import GameStep, _optimizer
from csc_cli.jobs.train import TrainConfig, run_train
from csc_cli.surgery import set_input_normalization


def _model(csc):
    torch.manual_seed(0)
    model = build_autoencoder("ctrl_dcgan32", in_chans=1, feature_dim=6, csc=csc, width=2).double()
    set_input_normalization(model, [0.5], [0.5])
    return model


def _after_one_iteration(model, **weights):
    """Parameters after one game iteration with plain SGD (no momentum, lr 1e-2): a change is minus
    lr times the gradient."""
    model = copy.deepcopy(model)
    cfg = TrainConfig(arch="ctrl_dcgan32", feature_dim=6, **weights)
    groups = [{"params": list(model.encoder.parameters())}, {"params": list(model.decoder.parameters())}]
    game = GameStep(model, torch.optim.SGD(groups, lr=1.0), cfg, num_classes=2, device=torch.device("cpu"),
                    lr=lambda step: 1e-2)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 32, 32, generator=g, dtype=torch.float64)
    terms = game(x, torch.arange(16) % 2)
    return model, terms


@pytest.mark.parametrize("csc", ["all", "none"])
@pytest.mark.parametrize("term", ["pixel_weight", "feature_weight"])
def test_consistency_terms_move_only_the_decoder_and_linearly_in_their_weight(csc, term):
    """Against the pure game (weight 0) on the same batch and start: the encoder ends identical
    (the terms never reach it), and the decoder's change is linear in the weight (float64)."""
    start = _model(csc)
    runs = {w: _after_one_iteration(start, **{term: w}) for w in (0.0, 1.0, 2.0)}
    for w in (1.0, 2.0):
        for a, b in zip(runs[0.0][0].encoder.parameters(), runs[w][0].encoder.parameters()):
            assert torch.equal(a, b)
    moved = 0.0
    for p0, p1, p2 in zip(*(runs[w][0].decoder.parameters() for w in (0.0, 1.0, 2.0))):
        torch.testing.assert_close(p2 - p0, 2 * (p1 - p0), rtol=1e-9, atol=1e-12)
        moved += float((p1 - p0).detach().abs().sum())
    assert moved > 0  # the term does reach the decoder
    # the logged terms are the same quantities whatever the weight (it scales the loss, not the term)
    assert runs[1.0][1]["pixel"] == pytest.approx(runs[0.0][1]["pixel"], rel=1e-12)


@pytest.mark.parametrize("csc", ["all", "none"])
def test_the_encoder_pixel_term_moves_the_encoder_linearly_in_its_weight(csc):
    """encoder_pixel_weight adds the pixel term to the encoder's loss through g (g's weights stay put
    in the encoder step): the encoder's change is linear in the weight (float64)."""
    start = _model(csc)
    runs = {w: _after_one_iteration(start, encoder_pixel_weight=w)[0] for w in (0.0, 1.0, 2.0)}
    moved = 0.0
    for p0, p1, p2 in zip(*(runs[w].encoder.parameters() for w in (0.0, 1.0, 2.0))):
        torch.testing.assert_close(p2 - p0, 2 * (p1 - p0), rtol=1e-9, atol=1e-12)
        moved += float((p1 - p0).detach().abs().sum())
    assert moved > 0


def test_running_statistics_see_real_images_only():
    """f runs on x and on g(f(x)) in every iteration; only the real batches may move the encoder's
    BatchNorm running statistics, which eval mode uses (CTRL's own scripts evaluate in train mode
    and never noticed). Reference: the same encoder run on the two real batches alone."""
    start = _model("none")
    trained, _ = _after_one_iteration(start)
    # replay what the iteration's real forwards do to a BN: f(x) before the encoder step, f(x) after
    reference = copy.deepcopy(start)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 32, 32, generator=g, dtype=torch.float64)
    reference.train()
    with torch.no_grad():
        reference.encode(x)
        for p, q in zip(reference.encoder.parameters(), trained.encoder.parameters()):
            p.copy_(q)  # the encoder as the decoder step saw it
        reference.encode(x)
    for name, buf in trained.encoder.named_buffers():
        if "running" in name:
            torch.testing.assert_close(buf, dict(reference.encoder.named_buffers())[name], rtol=1e-12, atol=1e-14)


def _mean_image_psnr(image_size=32):
    train = load_dataset("digits", "train", None, image_size=image_size)
    test = load_dataset("digits", "test", None, image_size=image_size)
    mse = float((test.images - train.images.mean(0, keepdim=True)).square().mean())
    return 10 * math.log10(1 / mse)


SEEDS = (0, 1, 2)
T_99_2DOF = 6.965  # one-sided 99% Student t with len(SEEDS) - 1 = 2 degrees of freedom


@pytest.mark.slow
def test_a_short_csc_ctrl_run_with_the_pixel_term_reconstructs(tmp_path):
    """Three seeds of a small CSC-CTRL (width 8, d 16, batch 128, 66 iterations) with the pixel term
    in both networks' losses:
    the lower 99% confidence bound of the mean test PSNR (mean - t * s / sqrt(n)) must clear the
    mean-training-image yardstick (13.5 dB at 32 px). A decoder that stops forming reconstructions
    (the pure game's 7-9 dB) fails it whatever the seeds' spread. Measured with the synthesis layout
    (issue 30), one thread: 17.30 / 17.55 / 18.05 dB, bound 16.1."""
    psnr = []
    for seed in SEEDS:
        cfg = TrainConfig(dataset="digits", image_size=32, arch="ctrl_dcgan32", csc="all", width=8, feature_dim=16,
                          batch_size=128, epochs=6, lr=5e-3, schedule="linear", min_lr=0.0, weight_decay=0.0,
                          augment="none", pixel_weight=1.0, encoder_pixel_weight=1.0, seed=seed,
                          out=str(tmp_path / f"seed{seed}"))
        psnr.append(run_train(cfg).last["test_psnr"])
    yardstick = _mean_image_psnr()
    bound = statistics.mean(psnr) - T_99_2DOF * statistics.stdev(psnr) / math.sqrt(len(psnr))
    assert bound > yardstick, f"test PSNR per seed {psnr}: 99% lower bound {bound:.2f} dB <= mean image {yardstick:.2f}"
