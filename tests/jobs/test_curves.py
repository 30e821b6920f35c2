"""csc inspect RUN_DIR: training curves drawn from metrics.jsonl -- the plotted numbers are the file's."""

import json

import pytest

from csc_cli.jobs.curves import CurvesConfig, read_metrics, run_curves
from csc_cli.jobs.train import TrainConfig, run_train


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_sdnet):
    """csc train's default run (the session's SDNet, 12 epochs), a short plain one and a short CSC-CTRL."""
    from pathlib import Path

    root = tmp_path_factory.mktemp("curves")
    classifier = root / "sdnet"  # a copy under a short name: the figures label runs by their folder
    classifier.mkdir()
    (classifier / "metrics.jsonl").write_text((Path(digits_sdnet).parent / "metrics.jsonl").read_text())
    (classifier / "model.safetensors").write_bytes(Path(digits_sdnet).read_bytes())
    plain = run_train(TrainConfig(epochs=2, max_batches=1, csc="none", out=str(root / "plain"))).out
    autoencoder = run_train(TrainConfig(dataset="digits", image_size=32, arch="ctrl_dcgan32", csc="all", width=4,
                                        feature_dim=8, batch_size=64, epochs=2, max_batches=1, lr=1e-3,
                                        weight_decay=0.0, schedule="linear", min_lr=0.0, augment="none",
                                        out=str(root / "ae"))).out
    return {"sdnet": str(classifier), "plain": plain, "ae": autoencoder}


def _file_series(run, column):
    rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    return [r["epoch"] for r in rows], [float(r[column]) for r in rows]


def test_a_classifier_runs_curves_are_its_metrics(runs, tmp_path):
    result = run_curves(CurvesConfig(runs=[runs["sdnet"]], out=str(tmp_path)))
    for group, column in (("loss", "train_loss"), ("loss", "test_loss"), ("scores", "test_acc"), ("lr", "lr")):
        epochs, values = _file_series(runs["sdnet"], column)
        assert result.series[group][column]["sdnet"] == {"epoch": epochs, "value": values}
    rows = read_metrics(runs["sdnet"])
    layer = result.series["csc"]["conv1 nonzero"]["sdnet"]
    assert layer["value"] == [r["csc_layers"]["conv1"]["nonzero"] for r in rows]
    assert layer["epoch"] == [r["epoch"] for r in rows] == list(range(1, 13))
    assert {p.rsplit("/", 1)[1] for p in result.images} == {"curves_loss.png", "curves_scores.png", "curves_lr.png",
                                                            "curves_csc.png"}
    assert all(open(p, "rb").read(4) == b"\x89PNG" for p in result.images)


def test_an_autoencoders_curves_are_the_games_terms_and_psnr(runs, tmp_path):
    result = run_curves(CurvesConfig(runs=[runs["ae"] + "/metrics.jsonl"], out=str(tmp_path)))
    for column in ("T", "dR_Z", "pairwise"):
        assert result.series["loss"][column]["ae"]["value"] == _file_series(runs["ae"], column)[1]
    assert result.series["scores"]["test_psnr"]["ae"]["value"] == _file_series(runs["ae"], "test_psnr")[1]
    assert "train_acc" not in result.series["scores"]


def test_two_runs_share_the_figures_and_a_plain_convnet_has_no_layer_panel(runs, tmp_path):
    result = run_curves(CurvesConfig(runs=[runs["sdnet"], runs["plain"]], out=str(tmp_path)))
    assert set(result.series["scores"]["test_acc"]) == {"sdnet", "plain"}
    assert set(result.series["csc"]["conv1 step_size"]) == {"sdnet"}  # the plain run has no CSC layer
    alone = run_curves(CurvesConfig(runs=[runs["plain"]], out=str(tmp_path / "p")))
    assert "csc" not in alone.series and alone.notes


def test_the_cli_draws_curves_and_refuses_what_does_not_apply(runs, tmp_path, cli):
    code, out, err = cli(["inspect", runs["sdnet"], runs["ae"], "--out", str(tmp_path / "c"), "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert set(data["series"]["loss"]["train_loss"]) == {"sdnet"} and "ae" in data["series"]["loss"]["T"]
    code, out, err = cli(["inspect", runs["sdnet"], "--out", str(tmp_path / "d")])
    assert code == 0 and (tmp_path / "d" / "curves_loss.png").is_file() and "curves_loss" in out.replace("\n", "")
    code, _, err = cli(["inspect", runs["sdnet"], "--layer", "conv1"])
    assert code != 0 and "--layer" in err and "Traceback" not in err
    code, _, err = cli(["inspect", runs["sdnet"], f"{runs['sdnet']}/model.safetensors"])
    assert code != 0 and "not both" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    code, _, err = cli(["inspect", str(empty)])
    assert code != 0 and "empty" in err
