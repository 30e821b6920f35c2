"""The csc command line: help, the layer demo end to end, and one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

from csc_cli.cli import main


def test_help_lists_commands(cli):
    code, out, _ = cli(["--help"])
    assert code == 0 and "demo" in out and "version" in out


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "csc_cli", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "demo" in out.stdout


def test_demo_json_end_to_end(cli, tmp_path):
    code, out, _ = cli(["demo", "--max-images", "300", "--epochs", "1", "--atoms", "8", "--json",
                        "--lam-grid", "0.05,0.4", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads(out)
    assert result["train_images"] == 240 and result["test_images"] == 60
    # K = 1 is conv + fixed bias + ReLU. The layer folds -lam t into the conv's bias, the demo
    # subtracts it after the conv: the same k*k-term float32 sums, but not bit for bit (whether the
    # bias is fused, and the summation order, vary with the oneDNN/SIMD path: 2e-8 with AVX2).
    # Worst case for two summation orders plus the bias add: k^2 eps (sum|terms| + lam t), where
    # sum|terms| <= t ||atom||_1 max|x| <= t k (unit-norm atoms, one channel, pixels in [0, 1]).
    # A wrong step or threshold is off by ~lam t = 5e-3; this bound is ~1e-6.
    k, lam, t = result["config"]["kernel_size"], result["config"]["lam"], result["step_size"]
    assert result["one_step_identity_error"] <= k * k * torch.finfo(torch.float32).eps * (k + lam) * t
    low, high = result["sparsity_vs_lam"]
    assert high["nonzero"] < low["nonzero"]  # a larger lambda gives sparser codes
    gaps = [row["fista"] for row in result["convergence"]]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < gaps[0]  # more steps, closer to optimal
    assert all(row["fista"] <= row["ista"] + 1e-9 for row in result["convergence"])
    for path in result["images"]:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_table_renders(cli):
    code, out, _ = cli(["demo", "--max-images", "200", "--epochs", "1", "--atoms", "4"])
    assert code == 0
    assert "Held-out codes vs lambda" in out and "K = 1 is conv + fixed bias + ReLU: holds" in out


def test_user_error_is_one_line_without_traceback(cli):
    code, out, err = cli(["demo", "--lambda", "-1", "--max-images", "50"])
    assert code == 1
    assert "lam must be" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="lam"):
        main(["--debug", "demo", "--lambda", "-1", "--max-images", "50"])


def test_bad_option_value_exits_nonzero(cli):
    code, _, err = cli(["demo", "--lam-grid", "a,b"])
    assert code != 0 and "expected comma-separated numbers" in err
