"""Implicit backward: memory does not grow with the number of solver steps (measured, not assumed)."""

import os

import pytest

from csc_cli import profiling

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="CPU peak memory needs Linux /proc"),
]


def _peak(backward, steps):
    result = profiling.isolated("layer_train_step_memory", backward=backward, steps=steps, batch=8, size=48)
    return result["peak_bytes"], result["code_bytes"]


def test_implicit_peak_memory_is_flat_in_k():
    k2, code = _peak("implicit", 2)
    k20, _ = _peak("implicit", 20)
    # measured here: 24.1 MiB vs 24.2 MiB (one code tensor is 2.25 MiB)
    assert k20 <= 1.3 * k2, (k2, k20)
    assert k2 > code  # the measurement sees at least the code itself


def test_unrolled_peak_memory_grows_with_k():
    """The control: the same measurement must see unrolled autograd keep every step."""
    k2, _ = _peak("unrolled", 2)
    k20, _ = _peak("unrolled", 20)
    assert k20 > 3 * k2, (k2, k20)  # measured here: 14.5 MiB vs 116 MiB
