"""The csc command line: help, the layer demo end to end, and one-line errors."""

import json
import subprocess
import sys

import pytest
import torch

import csc_cli
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


# ------------------------------------------------------------------ the shell: fast start, choices, progress
HELP_SCRIPT = r"""
import contextlib, io, json, sys
from csc_cli.cli import main
texts = {}
for cmd in ([], ["demo"], ["convert"], ["train"], ["eval"], ["inspect"], ["attack"], ["version"]):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main(cmd + ["--help"])
        except SystemExit:
            pass
    texts[" ".join(cmd) or "csc"] = buf.getvalue()
print(json.dumps({"help": texts, "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm"))}))
"""


@pytest.fixture(scope="module")
def help_texts():
    """Every command's --help, rendered in a fresh process (wide, so no choice list wraps), and
    the torch/timm modules that process imported."""
    import os

    env = {**os.environ, "TERMINAL_WIDTH": "400"}
    proc = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_help_imports_neither_torch_nor_timm(help_texts):
    assert help_texts["modules"] == []
    assert all(help_texts["help"].values())


def test_importing_the_package_is_lazy_and_the_api_still_works():
    script = ("import sys, csc_cli; before = 'torch' in sys.modules; from csc_cli import CSCConv2d; "
              "import csc_cli.convert; print(before, 'torch' in sys.modules, callable(csc_cli.convert), "
              "CSCConv2d.__name__, csc_cli.__version__)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True", "CSCConv2d", csc_cli.__version__]


@pytest.mark.parametrize("command, choices", [
    ("train", ["<stem|all|none>", "<unrolled|implicit|recompute>", "<sgd|adamw>", "<cosine|step|constant|linear>", "<multi|binary>",
               "<auto|none|crop|crop_flip|imagenet>", "<none|bf16|fp16>", "<last|best>"]),
    ("convert", ["<fista|ista|heavy_ball>", "<unrolled|implicit|recompute>"]),
    ("eval", ["<none|bf16|fp16>", "<first|all>", "standard", "noise", "sigma_table", "discrepancy"]),
    ("attack", ["<Linf|L2>", "<first|all>", "<quick>", "apgd-dlr", "autoattack", "more-steps", "through-rule"]),
    ("inspect", ["folder:PATH"]),
])
def test_every_command_help_lists_its_choices(help_texts, command, choices):
    text = help_texts["help"][command]
    for choice in choices:
        assert choice in text, (command, choice)


def test_train_help_shows_the_defaults(help_texts):
    text = " ".join(help_texts["help"]["train"].split())
    for shown in ("[default: (12)]", "[default: (resnet20_cifar)]", "[default: (0.1)]", "[default: (64)]",
                  "[default: (runs/<dataset>-<arch>-<csc>)]"):
        assert shown in text, shown


def test_usage_errors_are_one_line(cli):
    code, _, err = cli(["train", "--backward", "magic"])
    assert code == 1 and "magic" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(["eval", "no/such/model.safetensors"])
    assert code == 1 and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_plain_progress_lines_when_stdout_is_not_a_terminal(cli, tmp_path, monkeypatch):
    """Under pytest stdout is not a terminal: no live bar, but plain lines -- here one per batch,
    with the interval between lines set to 0."""
    import re

    from csc_cli.cli import progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0)
    code, out, err = cli(["train", "--epochs", "1", "--max-batches", "3", "--out", str(tmp_path / "p")])
    assert code == 0, err
    lines = [line for line in out.splitlines() if re.match(r"^\[\s*\d+ s\] epoch 1/1 \d/3", line)]
    assert len(lines) >= 3 and any("loss" in line and "img/s" in line for line in lines)


def test_heartbeat_prints_while_a_stage_runs_long(monkeypatch):
    import io
    import time

    from rich.console import Console

    from csc_cli.cli import progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.1)
    buf = io.StringIO()
    with progress.JobProgress(Console(file=buf, force_terminal=False, width=200), "attacking") as bar:
        bar.update("attack", 1, 12, "pgd unrolled")
        time.sleep(0.6)  # no event: the heartbeat still says where the job is
    lines = [line for line in buf.getvalue().splitlines() if "attack 1/12 " in line]
    assert len(lines) >= 3
