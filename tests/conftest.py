import os

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing when pytest runs alongside other work. An explicit
# OMP_NUM_THREADS wins, so `make test-portable` really runs the suite on one thread (a different
# floating-point reduction order) as well as on two.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))


# `make test` runs two pytest-xdist workers of one thread each (`-n 2 --dist loadgroup`). A worker
# builds its own session and module fixtures, so tests sharing an expensive one go to one worker: the
# trained models below by fixture, every other module's tests together (its module fixtures are then
# built once). Without xdist the marks do nothing.
SHARED_FIXTURES = ("cifar_mini_models", "digits_sdnet_run", "tiny_ae")


def pytest_itemcollected(item):
    """Marks each test as it is collected: before xdist's collection hook reads the groups."""
    if not item.config.pluginmanager.hasplugin("xdist"):  # -p no:xdist: the mark is not even registered
        return
    names = set(getattr(item, "fixturenames", ()))
    group = next((name for name in SHARED_FIXTURES if name in names), None)
    item.add_marker(pytest.mark.xdist_group(group or item.nodeid.split("::")[0]))


@pytest.fixture
def gen():
    """A seeded generator, so every test draws the same numbers whatever ran before it."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def cli(capsys):
    """Run the csc command line in-process: ``code, stdout, stderr = cli([...])``."""
    from csc_cli.cli import main

    def run(args):
        try:
            code = main(args)
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def digits_sdnet_run(tmp_path_factory):
    """`csc train`'s default run (SDNet with a CSC stem on digits, ~98% test accuracy, ~15 s), shared
    by the train, eval, attack and curves tests. Shorter runs are not stable enough to test against: 3
    epochs give 67-83% depending on the seed (BatchNorm's running statistics lag the fast early
    training)."""
    from csc_cli.jobs.train import TrainConfig, run_train

    return run_train(TrainConfig(out=str(tmp_path_factory.mktemp("digits_sdnet"))))


@pytest.fixture(scope="session")
def digits_sdnet(digits_sdnet_run):
    """The default run's model file."""
    return digits_sdnet_run.model_path


CIFAR_MINI = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-mini"


@pytest.fixture(scope="session")
def cifar_mini_models(tmp_path_factory):
    """SDNet (CSC stem, 4 epochs) and the plain ResNet (3 epochs: a trained source for convert and a
    baseline for eval), ResNet-20 layout, trained on cifar10-mini with the same recipe and seed --
    shared by the train, eval, attack and convert tests (skips without the data). Measured: SDNet
    45.2%, ResNet 41.3% test accuracy. (6 epochs each cost the suite another ~55 s.)"""
    if not CIFAR_MINI.exists():
        pytest.skip("needs ../shared/data/cifar10-mini")
    from csc_cli.jobs.train import TrainConfig, run_train

    root = tmp_path_factory.mktemp("cifar_mini")
    results = {}
    for csc, epochs in (("stem", 4), ("none", 3)):
        cfg = TrainConfig(dataset="cifar10", data_dir=str(CIFAR_MINI), arch="resnet20_cifar", csc=csc, epochs=epochs,
                          batch_size=64, lr=0.05, seed=0, out=str(root / csc))
        results[csc] = run_train(cfg)
    return results
