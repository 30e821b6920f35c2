import os

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing when pytest runs alongside other work.
torch.set_num_threads(min(2, os.cpu_count() or 1))


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
