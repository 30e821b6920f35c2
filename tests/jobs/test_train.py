"""csc train: the default digits run, CIFAR-10 on real data, kill-and-resume, DDP, recipes, bad input."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import csc_cli
from csc_cli.data import load_dataset
from csc_cli.data.pipeline import Batches, normalize
from csc_cli.jobs.classifier.train import evaluate
from csc_cli.jobs.train import TrainConfig, lr_at, run_train
from csc_cli.jobs.train_config import read_recipe

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ schedules and batches
def test_cosine_schedule_with_warmup():
    cfg = TrainConfig(epochs=10, lr=0.1, min_lr=1e-6, warmup_epochs=1)
    assert lr_at(cfg, 0, 100) == pytest.approx(0.001)
    assert lr_at(cfg, 99, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 100, 100) == pytest.approx(0.1)
    assert lr_at(cfg, 550, 100) == pytest.approx(1e-6 + 0.5 * (0.1 - 1e-6))
    assert lr_at(cfg, 999, 100) == pytest.approx(1e-6, abs=1e-6)
    step = TrainConfig(epochs=100, lr=0.1, schedule="step", milestones=[30, 60, 90])
    assert [lr_at(step, e * 10, 10) for e in (0, 29, 30, 60, 95)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 1e-4])


def test_batches_are_seeded_resumable_and_sharded():
    x = torch.rand(50, 3, 8, 8)
    y = torch.arange(50)
    b = Batches(x, y, 8, shuffle=True, augment="crop_flip", seed=3)
    full = list(b.epoch(2))
    tail = list(b.epoch(2, start_batch=4))
    assert all(torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]) for a, c in zip(full[4:], tail))
    assert not torch.equal(full[0][1], list(b.epoch(3))[0][1])  # a new order each epoch
    assert full[0][0].shape == (8, 3, 8, 8) and 0 <= float(full[0][0].min()) and float(full[0][0].max()) <= 1
    ranks = [Batches(x, y, 5, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    seen = torch.cat([lab for r in ranks for _, lab in r.epoch(0)])
    assert set(seen.tolist()) == set(range(50)) and len(ranks[0]) == len(ranks[1])


# ------------------------------------------------------------------ real training
@pytest.mark.slow
def test_default_run_learns_digits_and_the_model_file_restores_it(digits_sdnet_run):
    """`csc train`'s default run (the session's, conftest): it learns digits and its files say so."""
    result = digits_sdnet_run
    run = Path(result.out)
    # measured here: 98.9% after 12 epochs in ~15 s on 2 cores
    assert result.last["test_acc"] >= 0.95
    assert result.seconds > 0  # reported; wall-clock speed is the benchmarks' business, not a test's (it
    # exceeded a 120 s bound when two suites shared the 2 cores)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and "conv1" in rows[-1]["csc_layers"]
    assert (run / "summary.csv").read_text().count("\n") == 13
    model = csc_cli.load(result.model_path)
    test = load_dataset("digits", "test")
    card = model.csc_card
    assert card.data.dataset == "digits" and card.data.normalization is not None  # the model normalises itself
    acc = evaluate(model, Batches(test.images, test.labels, 256), torch.device("cpu"))["acc"]
    assert acc == pytest.approx(result.last["test_acc"], abs=1e-9)
    assert card.training["last_test_acc"] == pytest.approx(result.last["test_acc"])


@pytest.mark.slow
def test_sdnet_and_resnet_both_learn_cifar10_mini(cifar_mini_models):
    accs = {csc: r.last["test_acc"] for csc, r in cifar_mini_models.items()}
    print(f"cifar10-mini, resnet20_cifar, 4 / 3 epochs: SDNet (csc stem) {accs['stem']:.3f}, ResNet {accs['none']:.3f}")
    # chance is 0.10; measured 0.452 and 0.413 on 1017 test images (one standard error ~0.016):
    # 0.35 is four standard errors below the weaker
    assert accs["stem"] > 0.35 and accs["none"] > 0.35


@pytest.mark.slow
def test_held_out_selection_never_uses_the_test_set(tmp_path):
    cfg = TrainConfig(epochs=3, val_split=0.2, select="best", out=str(tmp_path / "sel"))
    result = run_train(cfg)
    vals = [row["val_acc"] for row in result.history]
    assert result.best["epoch"] == 1 + vals.index(max(vals))
    assert result.best["test_acc"] == result.history[result.best["epoch"] - 1]["test_acc"]
    assert json.loads((tmp_path / "sel" / "config.json").read_text())["select"] == "best"


@pytest.mark.slow
def test_ema_model_gets_step_sizes_for_its_own_weights(tmp_path):
    """The stored L of the EMA model's stem is ||A||^2 of the EMA atoms (exact: float64 SVD of the
    dense operator), not that of the trained weights it averages. A slow average (decay 0.99 over
    16 steps) keeps the two far apart: 6.6-11.6% across thread counts and CPU capabilities, against
    a stored-estimate error of 0.07%. (With decay 0.9 they were only 1.3-3.4% apart against an error
    of up to 0.26%, a ratio of up to 0.20 against the 0.25 asserted below.)"""
    from csc_cli.core import dense_matrix, normalize_atoms

    result = run_train(TrainConfig(epochs=2, ema=0.99, out=str(tmp_path / "ema"), max_batches=8))
    layer = csc_cli.load(result.model_path).conv1
    size = tuple(int(s) for s in layer.lipschitz_size)

    def exact(atoms):
        return float(torch.linalg.matrix_norm(dense_matrix(layer.geometry, atoms.double(), size), ord=2)) ** 2

    stored = float(layer.lipschitz)
    own = exact(layer.atoms)
    trained = exact(normalize_atoms(load_file(str(tmp_path / "ema" / "state.safetensors"))["model.conv1.weight"]))
    print(f"stem L: stored {stored:.4f}, exact for the EMA atoms {own:.4f}, for the trained atoms {trained:.4f}")
    assert 0.995 * own <= stored <= own * (1 + 1e-6)  # a power-iteration estimate approaches from below
    assert abs(stored - own) < 0.25 * abs(trained - own)


def test_the_weight_average_copies_each_buffer_from_its_namesake(gen):
    """EMA.update copies the live model's buffers (lambdas, BatchNorm statistics, stored step sizes)
    into the average by name: the live CSC layers gain warm-start buffers on their first training
    forward and the average does not, so a pairing by position copied Lipschitz constants into
    lambdas and BN counters into step sizes (found in review)."""
    from csc_cli.jobs.training import EMA
    from csc_cli.models import build_model

    model = build_model("resnet20_cifar", 10, csc="all")
    ema = EMA(model, 0.9)
    model.train()
    model(torch.rand(4, 3, 16, 16, generator=gen))
    ema.update(model)
    live = dict(model.named_buffers())
    for name, buffer in ema.model.named_buffers():
        assert torch.equal(buffer, live[name]), name


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from csc_cli.jobs.events import BatchEnd
    from csc_cli.jobs.train import TrainConfig, run_train
    out, resume, kill_at = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
    def progress(event):
        if isinstance(event, BatchEnd) and event.epoch == 1 and event.batch == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    cfg = TrainConfig(epochs=2, batch_size=64, deterministic=True, checkpoint_every=5, out=out, resume=resume,
                      seed=1)
    run_train(cfg, progress)
    """
)


@pytest.mark.slow
def test_killed_run_resumes_bitwise_identical(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the reference run and the run to be killed are independent: side by side, one thread each
    ref = subprocess.Popen([sys.executable, str(script), str(tmp_path / "ref"), "", "0"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run"), "", "10"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ref_err, killed_err = ref.communicate()[1], killed.communicate()[1]
    assert ref.returncode == 0, ref_err
    assert killed.returncode == -signal.SIGKILL, killed_err
    state = tmp_path / "run" / "state.safetensors"
    from csc_cli.checkpoint import load_state

    _, meta = load_state(state)
    assert (meta["epoch"], meta["batch"]) == (1, 8)  # mid-epoch: the checkpoint at step 30 (22 steps an epoch)
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(state), "0"], env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "ref" / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.mark.slow
def test_two_processes_on_gloo(tmp_path):
    """6 epochs, not 3: after 3 the eval-mode accuracy still rides BatchNorm's lagging running
    statistics and gave 0.49-0.68 by float path (ATEN_CPU_CAPABILITY default / avx512 / avx2);
    after 6 it gave 0.983-0.986 (and >= 0.97 from epoch 4 on). --standalone: torchrun picks a free
    port, so two suites on one machine do not collide."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "csc_cli",
                           "train", "digits", "--epochs", "6", "--batch-size", "32", "--out", str(tmp_path / "ddp"),
                           "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # one writer: no duplicated lines
    assert rows[-1]["test_acc"] > 0.9  # chance is 0.1; 0.9 is 30 of 359 test images below the lowest measured
    assert csc_cli.load(tmp_path / "ddp" / "model.safetensors") is not None


# ------------------------------------------------------------------ recipes and CLI
def test_recipe_round_trip(tmp_path, cli):
    recipe = ROOT / "recipes" / "digits_sdnet.toml"
    code, out, err = cli(["train", "--recipe", str(recipe), "--epochs", "1", "--max-batches", "2",
                          "--out", str(tmp_path / "r"), "--json"])
    assert code == 0, err
    resolved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert resolved["epochs"] == 1 and resolved["arch"] == "resnet20_cifar" and resolved["augment"] == "crop"
    # the resolved config is itself a valid recipe that reproduces the same config
    import tomllib  # noqa: F401 - the recipe format

    lines = []
    for key, value in resolved.items():
        if key == "csc_version" or value is None:
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    (tmp_path / "again.toml").write_text("\n".join(lines))
    code, _, err = cli(["train", "--recipe", str(tmp_path / "again.toml"), "--out", str(tmp_path / "r2"), "--json"])
    assert code == 0, err
    again = json.loads((tmp_path / "r2" / "config.json").read_text())
    assert {k: v for k, v in again.items() if k != "out"} == {k: v for k, v in resolved.items() if k != "out"}


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_parses(recipe):
    cfg = TrainConfig.from_toml(recipe)
    cfg.validate()
    # issue 29: an SDNet recipe's model answers --lambda auto out of training (the default digits run
    # stays a 15-second demo); a plain ConvNet or an autoencoder has no rule to calibrate
    builds_sdnet = "csc" in read_recipe(recipe) and cfg.csc in ("stem", "all")  # (a warm start's model is --init's)
    sdnet = builds_sdnet and not cfg.autoencoder and cfg.dataset != "digits"
    assert cfg.calibrate_lambda == (sdnet or recipe.stem == "cifar10_convert_robust"), recipe.stem
    if recipe.stem.startswith("ctrl_"):  # the CTRL game (PAPER.md section 2): Adam, linear decay to 0
        assert cfg.autoencoder and cfg.schedule == "linear" and cfg.min_lr == 0 and cfg.weight_decay == 0
        if cfg.dataset != "digits" and not recipe.stem.endswith("_cpu"):  # the reference settings
            # (digits and *_cpu are documented CPU budgets whose departures their comments state)
            assert (cfg.lr, cfg.feature_dim, cfg.eps2) == (1.5e-4, 128, 0.5)
            assert cfg.batch_size == {"cifar10": 1600, "imagenet": 300}[cfg.dataset]
            # the paper's pure game: no sample-wise consistency term (issue 24 keeps them 0 here)
            assert (cfg.pixel_weight, cfg.feature_weight, cfg.encoder_pixel_weight) == (0.0, 0.0, 0.0)
        else:
            assert "DEPARTS FROM THE PAPER" in recipe.read_text() or cfg.pixel_weight == 0
    elif recipe.stem.endswith("_warmstart"):  # fine-tuning a converted model: a tenth of the paper's lr
        assert (cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.init) == (0.01, 128, 5e-4, None)
        # distillation from the source is on; the continuation path is off (issue 25: no gain measured)
        assert cfg.distill > 0 and cfg.continuation == 0
    elif recipe.stem == "cifar10_convert_robust":  # issue 29: at most 5 epochs, --lambda auto ready at the end
        assert (cfg.lr, cfg.batch_size, cfg.init, cfg.epochs) == (0.01, 128, None, 5)
        assert cfg.distill > 0 and cfg.calibrate_lambda and cfg.calibration_rule == "best"
    elif recipe.stem == "cifar10_resnet20_stem":  # the SDNet CIFAR recipe on ResNet-20, cut to a CPU budget
        assert (cfg.arch, cfg.csc, cfg.lam, cfg.steps) == ("resnet20_cifar", "stem", 0.1, 2)
        assert (cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.epochs, cfg.nesterov) == (0.1, 128, 5e-4, 30, True)
    elif cfg.dataset.startswith("cifar"):
        assert (cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.epochs, cfg.nesterov) == (0.1, 128, 5e-4, 220, True)
    elif cfg.dataset == "imagenet":
        assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.milestones, cfg.nesterov) == (0.1, 1e-4, 100, [30, 60, 90], False)
        assert cfg.batch_size == (256 if cfg.csc == "all" else 512)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "mnist"], "unknown dataset"),
        (["train", "--arch", "resnet181"], "did you mean"),
        (["train", "--epochs", "0"], "epochs must be >= 1"),
        (["train", "--select", "best"], "--val-split"),
        (["train", "cifar10", "--data-dir", "/nonexistent/place"], "give --data-dir"),
        # issue 32: an option one task family would ignore is refused, naming the family
        (["train", "--width", "16"], "options of the CTRL game"),
        (["train", "--pixel-weight", "1"], "options of the CTRL game"),
        (["train", "--ctrl-image", "code"], "options of the CTRL game"),
        (["train", "--arch", "ctrl_dcgan32", "--csc", "none", "--ctrl-image", "code"], "--ctrl-image code is CSC-CTRL's"),
        (["train", "--arch", "ctrl_dcgan32", "--csc", "all", "--ema", "0.9"], "classifier options"),
        (["train", "--arch", "ctrl_dcgan32", "--csc", "all", "--deterministic"], "classifier options"),
        (["train", "--arch", "ctrl_dcgan32", "--csc", "all", "--compile"], "classifier options"),
        (["train", "--arch", "ctrl_dcgan32", "--csc", "all", "--channels-last"], "classifier options"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, cli, tmp_path):
    code, _, err = cli(args + ["--out", str(tmp_path / "x")])
    assert code == 1 and message in err and "Traceback" not in err


def test_bad_recipe_and_out_and_resume(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('epochs = "ten"\nfoo = 1\n')
    code, _, err = cli(["train", "--recipe", str(bad)])
    assert code == 1 and "unknown key(s) foo" in err
    bad.write_text('epochs = "ten"\n')
    code, _, err = cli(["train", "--recipe", str(bad)])
    assert code == 1 and "epochs must be an integer" in err
    for line, message in (('width = "wide"', "width must be an integer"), ("init = 3", "init must be a string"),
                          ("max_batches = 1.5", "max_batches must be an integer")):  # defaults of None, typed too
        bad.write_text(line + "\n")
        code, _, err = cli(["train", "--recipe", str(bad)])
        assert code == 1 and message in err, err
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = cli(["train", "--out", str(afile)])
    assert code == 1 and "is a file" in err
    code, _, err = cli(["train", "--epochs", "1", "--max-batches", "1", "--out", str(tmp_path / "s"), "--json"])
    assert code == 0
    code, _, err = cli(["train", "--arch", "resnet18_cifar", "--resume", str(tmp_path / "s" / "state.safetensors"),
                        "--out", str(tmp_path / "s2")])
    assert code == 1 and "state of a resnet20_cifar" in err


def test_bf16_autocast_and_channels_last_on_cpu(tmp_path):
    result = run_train(TrainConfig(epochs=1, max_batches=3, amp="bf16", channels_last=True, out=str(tmp_path / "b")))
    assert torch.isfinite(torch.tensor(result.last["train_loss"]))
    assert csc_cli.load(result.model_path).conv1.weight.dtype == torch.float32


def test_fine_tune_a_converted_model(tmp_path, cli):
    target = tmp_path / "conv.safetensors"
    code, _, err = cli(["convert", "timm:resnet20_cifar", "--num-classes", "10", "--layers", "stem", "--data", "fake",
                        "--compare-images", "2", "--out", str(target)])
    assert code == 0, err
    result = run_train(TrainConfig(dataset="fake", init=str(target), epochs=1, max_batches=2, out=str(tmp_path / "ft")))
    tuned = csc_cli.load(result.model_path)
    assert type(tuned.conv1).__name__ == "CSCConv2d" and tuned.csc_card.data.dataset == "fake"


@pytest.mark.slow
def test_compiled_training_runs(tmp_path, monkeypatch):
    if os.environ.get("ATEN_CPU_CAPABILITY") == "default":
        # with ATen's portable (non-SIMD) kernels, inductor's vectorised C++ (at::vec) fails to build
        # on torch 2.14 ("'at::vec' has not been declared"); scalar code compiles the same graph
        import torch._inductor.config as inductor_config

        monkeypatch.setattr(inductor_config.cpp, "simdlen", 1)
    result = run_train(TrainConfig(epochs=1, max_batches=3, compile=True, out=str(tmp_path / "c")))
    assert torch.isfinite(torch.tensor(result.last["train_loss"]))


@pytest.mark.slow
def test_cli_resnet18_on_cifar_is_sdnet18_of_the_paper(cli, tmp_path):
    """`csc train cifar10 --arch resnet18 --epochs 1 --max-batches 1` builds the CIFAR layout
    (PAPER.md: SDNet-18 has 11,173,962 parameters on CIFAR-10), says so, and the model file it
    writes rebuilds that architecture."""
    from tests.conftest import CIFAR_MINI

    code, out, err = cli(["train", "cifar10", "--data-dir", str(CIFAR_MINI), "--arch", "resnet18", "--epochs", "1",
                          "--max-batches", "1", "--batch-size", "32", "--out", str(tmp_path / "r18"), "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["parameters"] == 11_173_962 and result["arch"] == "resnet18_cifar"
    assert any("timm:resnet18" in note for note in result["notes"])
    model = csc_cli.load(result["model_path"])
    assert model.csc_card.arch == "resnet18_cifar" and sum(p.numel() for p in model.parameters()) == 11_173_962


# ------------------------------------------------------------------ output names, tiny data, resume alone, events
def test_default_output_directory_is_a_readable_name():
    cfg = TrainConfig(dataset="folder:/tmp/some where/my pics/", arch="timm:resnet18", csc="all")
    assert cfg.default_out() == "runs/folder-my-pics-timm-resnet18-all"
    assert ":" not in cfg.default_out() and cfg.resolved().out == cfg.default_out()
    assert TrainConfig().default_out() == "runs/digits-resnet20_cifar-stem"
    assert TrainConfig(out="x").resolved().out == "x"


def test_a_dataset_smaller_than_one_batch_still_trains(tmp_path):
    from csc_cli.jobs.events import BatchEnd
    from tests.data.conftest import write_image_folder

    root = write_image_folder(tmp_path / "tiny", {"train": 2, "val": 1})  # 6 training images, batch 64
    batches = []
    result = run_train(TrainConfig(dataset=f"folder:{root}", image_size=16, epochs=2, workers=0,
                                   out=str(tmp_path / "run")),
                       lambda e: batches.append(e) if isinstance(e, BatchEnd) else None)
    assert len(batches) == 2 and all(b.batches == 1 for b in batches)  # one partial-batch step per epoch
    assert any("partial batch of 6" in note for note in result.notes)
    assert csc_cli.load(result.model_path) is not None
    one = write_image_folder(tmp_path / "one", {"train": 1, "val": 1}, classes=1)
    with pytest.raises(ValueError, match="at least 2"):
        run_train(TrainConfig(dataset=f"folder:{one}", image_size=16, workers=0, out=str(tmp_path / "r1")))


class _Stop(Exception):
    pass


def test_resume_with_the_state_file_alone(tmp_path, cli):
    """A run stopped after its first epoch resumes from `csc train --resume STATE` alone: same
    settings (non-default ones included), same output directory."""
    from csc_cli.jobs.events import EpochStart

    out = tmp_path / "run"
    cfg = TrainConfig(epochs=2, max_batches=2, lr=0.05, batch_size=32, seed=3, out=str(out))

    def stop_at_second_epoch(event):
        if isinstance(event, EpochStart) and event.epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        run_train(cfg, stop_at_second_epoch)
    code, text, err = cli(["train", "--resume", str(out / "state.safetensors"), "--json"])
    assert code == 0, err
    result = json.loads(text)
    assert result["resumed_from_epoch"] == 1 and len(result["history"]) == 2 and result["out"] == str(out)
    resolved = json.loads((out / "config.json").read_text())
    assert (resolved["lr"], resolved["batch_size"], resolved["seed"], resolved["max_batches"]) == (0.05, 32, 3, 2)
    assert resolved["resume"] == str(out / "state.safetensors")


def test_progress_events_are_typed(tmp_path):
    from dataclasses import asdict, is_dataclass

    from csc_cli.cli.progress import JobProgress, TrainView
    from csc_cli.jobs import events as ev
    from rich.console import Console

    seen = []
    result = run_train(TrainConfig(epochs=2, max_batches=2, out=str(tmp_path / "e")), seen.append)
    assert all(isinstance(e, ev.Event) and is_dataclass(e) for e in seen)
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "TrainStart" and kinds[-1] == "TrainDone"
    assert kinds.count("EpochStart") == kinds.count("EpochEnd") == 2 and kinds.count("BatchEnd") == 4
    ends = [e for e in seen if isinstance(e, ev.EpochEnd)]
    rows = [json.loads(line) for line in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in asdict(e).items() if v is not None} for e in ends] == rows == result.history
    console = Console(file=__import__("io").StringIO(), width=200)
    with JobProgress(console, "training") as bar:  # the renderer accepts every event the job sent
        view = TrainView(bar, "t")
        for e in seen:
            view(e)
    assert view.table.row_count == 2


def test_every_field_whose_default_is_none_has_a_recipe_type():
    """A recipe key is type-checked against its field's default -- or, where that is None, against
    OPTIONAL_TYPES; a new such field without an entry would be unchecked (issue 32)."""
    import dataclasses

    from csc_cli.jobs.train_config import OPTIONAL_TYPES

    none_fields = {f.name for f in dataclasses.fields(TrainConfig) if f.default is None}
    assert none_fields == set(OPTIONAL_TYPES)
