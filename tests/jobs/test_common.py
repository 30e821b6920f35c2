"""The job parts every job shares: accuracy (and its DDP reduction), evaluation data, lambda grids."""

import pytest
import torch
import torch.nn as nn

from csc_cli.jobs.common import Tally, accuracy, accuracy_over_lambdas, evaluation_data, over_lambdas, predict
from csc_cli.models import build_model


class _TwoRanks:
    """A stand-in for DistributedContext: every rank holds the same counts."""

    active = True

    def sum(self, values):
        return [2 * v for v in values]


def test_accuracy_counts_and_reduces_over_processes(gen):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(10, 3, 2, 2, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    logits = predict(model, x, torch.device("cpu"), batch_size=4)
    tally = accuracy(model, (x, y), torch.device("cpu"), batch_size=3)
    assert tally.seen == 10 and tally.correct == int((logits.argmax(1) == y).sum())
    assert tally.loss == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    both = tally.reduced(_TwoRanks())
    assert (both.correct, both.seen) == (2 * tally.correct, 20) and both.acc == tally.acc
    assert Tally().acc == 0.0 and tally.reduced(None) == tally


def test_eval_attack_and_inspect_draw_the_same_seeded_subset():
    model = build_model("resnet20_cifar", 10, csc="stem", in_chans=1)
    from csc_cli.surgery import card_of

    card = card_of(model)
    a = evaluation_data(card, "digits", None, 20, seed=5)
    b = evaluation_data(card, "digits", None, 20, seed=5)
    c = evaluation_data(card, "digits", None, 20, seed=6)
    assert len(a) == 20 and torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert torch.equal(a.indices, a.indices.sort().values)
    assert evaluation_data(card, "digits", None, None, seed=5).indices is None  # all of it


def test_lambda_grid_sets_and_restores_the_layer():
    model = build_model("resnet20_cifar", 10, csc="stem").eval()
    seen = over_lambdas(model, "conv1", [0.2, 0.7], lambda lam: float(model.conv1.lam))
    assert seen == pytest.approx([0.2, 0.7]) and float(model.conv1.lam) == pytest.approx(0.1)
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    accs = accuracy_over_lambdas(model, "conv1", [0.1, 5.0], x, y, torch.device("cpu"))
    assert len(accs) == 2 and all(0 <= a <= 1 for a in accs)
    assert accs[0] == accuracy(model, (x, y), torch.device("cpu")).acc
