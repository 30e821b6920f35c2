import os

import pytest
import torch

# Two cores on CI: keep torch from oversubscribing when pytest runs alongside other work.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def gen():
    """A seeded generator, so every test draws the same numbers whatever ran before it."""
    return torch.Generator().manual_seed(1234)
