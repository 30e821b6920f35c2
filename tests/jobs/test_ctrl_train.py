"""csc train on an autoencoder: the CTRL game (csc_cli.jobs.ctrl_train), compared with the game as
PAPER.md section 2 states it and with the rate-reduction closed forms of csc_cli.core.rate."""

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

import csc_cli
from csc_cli.autoencoders import build_autoencoder
from csc_cli.core.rate import ctrl_objective
from csc_cli.jobs.autoencoder.train import GameStep, features_of, reconstruction_scores
from csc_cli.jobs.train import TrainConfig, lr_at, run_train
from csc_cli.surgery import set_input_normalization

ROOT = Path(__file__).resolve().parents[2]


def test_linear_schedule_decays_to_min_lr():
    cfg = TrainConfig(epochs=4, lr=1e-3, schedule="linear", min_lr=0.0)
    assert lr_at(cfg, 0, 10) == pytest.approx(1e-3)
    assert lr_at(cfg, 20, 10) == pytest.approx(5e-4)
    assert lr_at(cfg, 40, 10) == pytest.approx(0.0)


def _tiny(csc="all"):
    torch.manual_seed(0)
    model = build_autoencoder("ctrl_dcgan32", in_chans=1, feature_dim=8, csc=csc)
    set_input_normalization(model, [0.5], [0.5])
    return model


@pytest.mark.parametrize("csc", ["all", "none"])
@pytest.mark.parametrize("encoder_steps,first_step_dr", [(1, False), (2, True)])
def test_each_step_moves_only_its_network(csc, encoder_steps, first_step_dr):
    """Encoder steps see gradients on encoder parameters only, the decoder step on decoder
    parameters only (the decoder output is detached in the encoder steps; the encoder is frozen in
    the decoder step); the two Adam groups carry CTRL's per-network betas."""
    model = _tiny(csc)
    cfg = TrainConfig(arch="ctrl_dcgan32", csc=csc, feature_dim=8, encoder_steps=encoder_steps,
                      first_step_dr=first_step_dr, encoder_beta1=0.0, encoder_beta2=0.9, decoder_beta1=0.5)
    from csc_cli.jobs.autoencoder.train import _optimizer

    optimizer = _optimizer(model, cfg)
    assert [g["betas"] for g in optimizer.param_groups] == [(0.0, 0.9), (0.5, 0.999)]
    enc, dec = set(map(id, model.encoder.parameters())), set(map(id, model.decoder.parameters()))
    seen = []
    real_step = optimizer.step

    def spy(*args, **kwargs):
        with_grad = {id(p) for g in optimizer.param_groups for p in g["params"] if p.grad is not None}
        seen.append("encoder" if with_grad == enc else "decoder" if with_grad == dec else f"mixed {len(with_grad)}")
        return real_step(*args, **kwargs)

    optimizer.step = spy
    game = GameStep(model, optimizer, cfg, num_classes=2, device=torch.device("cpu"), lr=lambda step: 1e-3)
    x = torch.rand(24, 1, 32, 32)
    y = torch.arange(24) % 2
    terms = game(x, y)
    assert seen == ["encoder"] * encoder_steps + ["decoder"]
    assert game.step == 1 and all(p.requires_grad for p in model.parameters())
    assert set(terms) >= {"T", "dR_Z", "dR_Zh", "pairwise", "R_Z", "train_mse"}
    assert game.warnings == []  # 12 samples per class >= d = 8
    game(x[:10], y[:10])  # 5 per class < d: the rate of a class is rank-capped, and the run says so once
    assert len(game.warnings) == 1 and "\n" not in game.warnings[0]


def test_reported_terms_are_the_objective_on_the_decoder_steps_features():
    """T returned by a step equals ctrl_objective on f(x) and f(g(f(x))) as the decoder step saw them
    (train-mode BatchNorm), recomputed from a copy of the model taken just before the step."""
    import copy

    model = _tiny("none")
    cfg = TrainConfig(arch="ctrl_dcgan32", csc="none", feature_dim=8, encoder_steps=1)
    from csc_cli.jobs.autoencoder.train import _optimizer

    x = torch.rand(32, 1, 32, 32)
    y = torch.arange(32) % 2
    optimizer = _optimizer(model, cfg)
    game = GameStep(model, optimizer, cfg, num_classes=2, device=torch.device("cpu"), lr=lambda step: 0.0)
    before = copy.deepcopy(model).train()
    terms = game(x, y)  # lr 0: Adam moves nothing, BatchNorm running stats aside
    with torch.no_grad():
        z = before.encode(x)
        zh = before.encode(before.decode(z))
        T, _ = ctrl_objective(z, zh, y, 2)
    assert terms["T"] == pytest.approx(float(T), rel=1e-5)


def test_reconstruction_scores_and_features():
    images = torch.rand(10, 1, 32, 32)
    scores = reconstruction_scores(images, images.clamp(0, 1) * 0 + images)
    assert scores["mse"] == 0 and scores["psnr"] == pytest.approx(120.0)
    noisy = (images + 0.1).clamp(0, 1)
    mse = float((noisy - images).square().mean())
    assert reconstruction_scores(images, noisy)["psnr"] == pytest.approx(10 * torch.log10(torch.tensor(1 / mse)).item())
    model = _tiny("none")
    z, recon = features_of(model, images, batch_size=4)
    assert z.shape == (10, 8) and recon.shape == images.shape and model.training
    assert torch.allclose(z.norm(dim=1), torch.ones(10), atol=1e-5)


SEEDS = (0, 1, 2)
T_99_2DOF = 6.965  # one-sided 99% Student t with len(SEEDS) - 1 = 2 degrees of freedom


@pytest.mark.slow
def test_short_csc_ctrl_training_on_digits_raises_dR_and_the_file_reloads(tmp_path):
    """Three epochs of CSC-CTRL on digits (32 px, width 16, d = 16), three seeds: the rate reduction
    of the training features and of the test features rises from the first epoch's. For the
    training features the margin comes from the seeds' spread: the lower 99% t-bound of the mean log
    ratio (last / first epoch) must be above 0 (measured, two threads: 0.299 / 0.314 / 0.324, bound
    0.26; since issue 30's synthesis layout, one thread: 0.276 / 0.354 / 0.318, bound 0.16). The test
    features' ratio varies more between seeds (log 0.47 / 1.19 / 1.06, now 0.50 / 1.54 / 0.90: the
    first epoch's value varies), so each seed must raise it on its own; that rise (a factor of 1.6
    or more) is far above the sampling error of a rate measured on all 359 test images. The saved
    autoencoder reloads with the test scores the run measured."""
    ratios = {"dR_Z": [], "test_dR": []}
    for seed in SEEDS:
        cfg = TrainConfig(dataset="digits", image_size=32, arch="ctrl_dcgan32", csc="all", width=16, feature_dim=16,
                          batch_size=256, epochs=3, lr=1e-3, weight_decay=0.0, schedule="linear", min_lr=0.0,
                          augment="none", seed=seed, out=str(tmp_path / f"run{seed}"))
        result = run_train(cfg)
        first, last = result.history[0], result.history[-1]
        for key in ratios:
            ratios[key].append(math.log(last[key] / first[key]))
    print({key: [round(v, 3) for v in logs] for key, logs in ratios.items()}, "log(last / first) per seed")
    logs = ratios["dR_Z"]
    bound = statistics.mean(logs) - T_99_2DOF * statistics.stdev(logs) / math.sqrt(len(logs))
    assert bound > 0, (logs, bound)
    assert min(ratios["test_dR"]) > 0, ratios["test_dR"]
    rows = [json.loads(line) for line in (tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all("pairwise" in r and "test_psnr" in r for r in rows)
    model = csc_cli.load(result.model_path)
    assert model.csc_card.task == "autoencoder" and model.csc_card.training["ctrl_mode"] == "multi"
    from csc_cli.data import load_dataset

    test = load_dataset("digits", "test", image_size=32)
    z, recon = features_of(model, test.images)
    assert reconstruction_scores(test.images, recon)["psnr"] == pytest.approx(last["test_psnr"], rel=1e-6)
    again = csc_cli.load(result.model_path)
    assert torch.equal(features_of(again, test.images[:64])[1], recon[:64])


def test_cli_trains_an_autoencoder_with_the_digits_recipe(cli, tmp_path):
    code, out, err = cli(["train", "digits", "--recipe", str(ROOT / "recipes" / "ctrl_digits.toml"), "--epochs", "1",
                          "--max-batches", "1", "--feature-dim", "8", "--csc", "none", "--out", str(tmp_path / "r"),
                          "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["arch"] == "ctrl_dcgan32" and {"T", "test_psnr", "test_dR"} <= set(result["last"])
    assert (tmp_path / "r" / "state.safetensors").exists() and (tmp_path / "r" / "summary.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["--csc", "stem"], "autoencoder: --csc all"),
    (["--ctrl-mode", "both"], "ctrl-mode"),
    (["--csc", "all", "--amp", "fp16"], "fp16"),
    (["--csc", "none", "--select", "best", "--val-split", "0.1"], "--select best is for classifiers"),
])
def test_bad_autoencoder_runs_are_refused_in_one_line(cli, tmp_path, args, message):
    code, out, err = cli(["train", "digits", "--arch", "ctrl_dcgan32", "--image-size", "32", *args,
                          "--out", str(tmp_path / "r")])
    assert code != 0 and message in (out + err) and "Traceback" not in (out + err)
    assert not (tmp_path / "r" / "model.safetensors").exists()


# ----------------------------------------------------------------------------- two processes
def _rank_gradients(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One rank of the two-process check: the game's objective on the gathered features of its half
    of the batch, backward, gradients summed over ranks as the trainer does (float64, eval-mode
    BatchNorm so that both runs see the same normalisation)."""
    import torch.distributed as tdist

    from csc_cli.jobs.autoencoder.train import _gather, _gather_labels, _sum_gradients

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)

    class Ctx:
        active, world_size = True, world

    model, x, y = _two_process_case()
    half = x.shape[0] // world
    xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
    z = model.encode(xs)
    zh = model.encode(model.decode(z))
    loss, _ = ctrl_objective(_gather(z, Ctx), _gather(zh, Ctx), _gather_labels(ys, Ctx), 4, mode="multi")
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    _sum_gradients(params, Ctx)
    torch.save({n: p.grad for n, p in model.named_parameters() if p.grad is not None},
               f"{out_dir}/rank{rank}.pt")
    tdist.destroy_process_group()


def _two_process_case():
    torch.manual_seed(0)
    model = build_autoencoder("ctrl_dcgan32", in_chans=1, feature_dim=8, csc="all").double()
    set_input_normalization(model, [0.5], [0.5])
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.arange(32) % 4
    for m in model.modules():  # BatchNorm's running statistics become exactly those of one pass over x
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    with torch.no_grad():  # one training-mode pass: the CSC layers' step sizes and BatchNorm's statistics
        model.train().reconstruct(x)
    return model.eval(), x, y


@pytest.mark.slow
def test_two_processes_sum_to_the_global_batch_gradient(tmp_path):
    """Under torchrun the rates are computed on the global batch: two ranks with 16 images each,
    features gathered with gradients and gradients summed, give the gradient of the one-process
    objective on all 32 images, to float64 rounding."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_gradients, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model, x, y = _two_process_case()
    z = model.encode(x)
    zh = model.encode(model.decode(z))
    loss, _ = ctrl_objective(z, zh, y, 4, mode="multi")
    loss.backward()
    reference = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert set(grads) == set(reference) and sum(bool(g.any()) for g in reference.values()) > 10
        for name, g in reference.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-9, atol=1e-12 * float(g.abs().max()) + 1e-15,
                                       msg=name)
    # the half-batch objective alone has another gradient: the check can fail
    model.zero_grad()
    z = model.encode(x[:16])
    loss, _ = ctrl_objective(z, model.encode(model.decode(z)), y[:16], 4, mode="multi")
    loss.backward()
    name = max(reference, key=lambda n: float(reference[n].abs().max()))
    assert not torch.allclose(dict(model.named_parameters())[name].grad, reference[name], rtol=1e-3)


def test_the_written_config_names_the_games_optimizer(tmp_path):
    """The game steps with Adam (betas per network) whatever --optimizer says: config.json and the
    resume state say adam; config.json is still a valid recipe, and a resume from the state runs."""
    from dataclasses import fields

    cfg = TrainConfig(dataset="digits", image_size=32, arch="ctrl_dcgan32", csc="none", feature_dim=8, width=8,
                      batch_size=64, epochs=2, max_batches=1, lr=1e-3, augment="none", out=str(tmp_path / "g"))
    assert cfg.optimizer == "sgd"  # the classifier's default, which the game never used

    class Stop(Exception):
        pass

    def stop_after_the_first_epoch(event):
        if type(event).__name__ == "EpochStart" and event.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        run_train(cfg, stop_after_the_first_epoch)
    written = json.loads((tmp_path / "g" / "config.json").read_text())
    assert written["optimizer"] == "adam" and written["encoder_beta1"] == 0.5
    recipe = TrainConfig(**{k: v for k, v in written.items() if k in {f.name for f in fields(TrainConfig)}})
    recipe.validate()
    resumed = TrainConfig.from_state(tmp_path / "g" / "state.safetensors")
    assert resumed.optimizer == "adam"
    result = run_train(resumed)
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    with pytest.raises(ValueError, match="CTRL game's"):  # a classifier does not take the game's optimizer
        run_train(TrainConfig(optimizer="adam", epochs=1, max_batches=1, out=str(tmp_path / "clf")))


def test_a_resume_cannot_change_the_autoencoders_shape(cli, tmp_path):
    """--width / --feature-dim with --resume would load a state of another shape: one line, not a
    size-mismatch traceback from load_state_dict."""
    base = ["train", "digits", "--arch", "ctrl_dcgan32", "--image-size", "32", "--csc", "none", "--width", "2",
            "--feature-dim", "8", "--epochs", "1", "--max-batches", "1", "--out", str(tmp_path / "r")]
    code, _, err = cli(base)
    assert code == 0, err
    state = str(tmp_path / "r" / "state.safetensors")
    for flag, value in (("--width", "4"), ("--feature-dim", "6")):
        code, out, err = cli(["train", "--resume", state, flag, value, "--epochs", "2"])
        assert code == 1 and f"{flag.lstrip('-').replace('-', '_')}=" in err and "Traceback" not in err, err


def test_ctrl_image_code_builds_the_layout_before_issue_30_and_a_resume_keeps_it(cli, tmp_path):
    """--ctrl-image code: the decoder's last layer is a sparse deconvolution (its code is the image);
    the model file says so, rebuilds it, and a resume cannot switch the image stage."""
    from csc_cli.autoencoders import decoder_image
    from csc_cli.layers import CSCConvTranspose2d

    out = tmp_path / "r"
    base = ["train", "digits", "--arch", "ctrl_dcgan32", "--image-size", "32", "--csc", "all", "--width", "2",
            "--feature-dim", "8", "--max-batches", "1", "--out", str(out)]
    code, _, err = cli(base + ["--epochs", "1", "--ctrl-image", "code"])
    assert code == 0, err
    model = csc_cli.load(out / "model.safetensors")
    assert isinstance(model.decoder.deconv4, CSCConvTranspose2d) and decoder_image(model) == "code"
    assert model.csc_card.notes["decoder_image"] == "code"
    code, _, err = cli(["train", "--resume", str(out / "state.safetensors"), "--epochs", "2", "--ctrl-image",
                        "synthesis"])
    assert code == 1 and "ctrl_image=code" in err and "Traceback" not in err, err
    code, _, err = cli(["train", "--resume", str(out / "state.safetensors"), "--epochs", "2"])
    assert code == 0, err
    assert decoder_image(csc_cli.load(out / "model.safetensors")) == "code"


@pytest.mark.parametrize("csc", ["none", "all"])
def test_a_binary_mode_run_writes_its_state_and_resumes(cli, tmp_path, csc):
    """Binary mode has no dR(Z) / dR(Zh): the epoch rows hold null for them (the state file refuses
    NaN, which stopped every binary run after its first epoch), and the run resumes from its state."""
    out = tmp_path / "r"
    args = ["train", "digits", "--arch", "ctrl_dcgan32", "--image-size", "32", "--csc", csc, "--ctrl-mode", "binary",
            "--width", "2", "--feature-dim", "8", "--max-batches", "1", "--out", str(out)]
    code, _, err = cli(args + ["--epochs", "1"])
    assert code == 0, err
    code, _, err = cli(["train", "--resume", str(out / "state.safetensors"), "--epochs", "2"])
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["dR_Z"] is None and r["dR_Zh"] is None and math.isfinite(r["T"]) for r in rows)
