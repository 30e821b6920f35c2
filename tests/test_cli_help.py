"""`csc --help` and every command's help read at 80 columns: panels of options with their
defaults, one-line command summaries, and a closing section of real examples."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.text import Text
from typer.testing import CliRunner

from csc_cli.cli import app
from csc_cli.cli.app import EXAMPLE_WIDTH, paragraphs, shell_lines

ROOT = Path(__file__).resolve().parents[1]
GROUP = typer.main.get_command(app)
COMMANDS = list(GROUP.commands)
WIDTH = 80

PANELS = {
    "train": ["Arguments", "Options", "Data", "Model", "CSC layers", "Optimisation", "Learning rate",
              "Warm start (--init a converted model)", "Robustness (classifiers)",
              "The CTRL game (autoencoders)", "Hardware & reproducibility"],
    "convert": ["Arguments", "Options", "Source", "Which convolutions", "CSC layers", "Check on data"],
    "eval": ["Arguments", "Options", "Data", "Corruptions", "Test-time lambda", "Calibrating lambda", "Autoencoders"],
    "attack": ["Arguments", "Options", "Data", "Threat model", "Attacks", "Test-time lambda", "Sanity checks"],
    "inspect": ["Arguments", "Options", "Data", "Classifiers", "Autoencoders"],
    "demo": ["Options", "CSC layer", "Learning and report"],
    "export": ["Arguments", "Options", "Graph", "Test-time lambda", "Check against csc", "Data"],
    "version": ["Options"],
}

# (command, option, the default its help must still show)
DEFAULTS = [
    ("train", "--lr", "[default: (0.1)]"), ("train", "--epochs", "[default: (12)]"),
    ("train", "--lambda", "[default: (0.1)]"), ("train", "--arch", "[default: (resnet20_cifar)]"),
    ("train", "--backward", "[default: (unrolled)]"), ("train", "--out", "[default: (runs/<dataset>-<arch>-<csc>)]"),
    ("train", "--channels-last", "[default: (False)]"), ("convert", "--lambda", "[default: (0.1)]"),
    ("convert", "--units", "[default: conv]"), ("eval", "--batch-size", "[default: 256]"),
    ("eval", "--severities", "[default: 1,2,3,4,5]"), ("attack", "--eps", "[default: 8/255]"),
    ("attack", "--attacks", "[default: fgsm,pgd,apgd-ce,apgd-dlr,square]"), ("inspect", "--max-steps", "[default: 50"),
    ("demo", "--lambda", "[default: 0.1]"),
]


def render(args):
    """The help of ``csc ARGS``, as an 80-column terminal shows it (no colour: not a terminal)."""
    result = CliRunner().invoke(app, [*args, "--help"], prog_name="csc",
                                env={"COLUMNS": str(WIDTH), "TERMINAL_WIDTH": None})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def helps():
    return {name: render([] if name == "csc" else [name]) for name in ["csc", *COMMANDS]}


def lines(text):
    return [line.rstrip() for line in text.splitlines()]


def option_block(text, option):
    """The rows of the panel entry that starts with ``option``, joined: its names, help and default."""
    rows = [line.strip("│ ") for line in lines(text) if line.startswith("│")]
    start = next(i for i, row in enumerate(rows) if re.match(re.escape(option) + r"[ ,/<]|" + re.escape(option) + "$",
                                                              row))
    block = [rows[start]]
    for row in rows[start + 1:]:
        if row.startswith("-") or not row:
            break
        block.append(row)
    return " ".join(" ".join(block).split())


def test_every_command_has_a_help_test():
    assert sorted(COMMANDS) == sorted(PANELS), "a new command: add its panels to PANELS"


@pytest.mark.parametrize("name", ["csc", *PANELS])
def test_help_fits_80_columns_and_nothing_is_cut(helps, name):
    text = helps[name]
    too_long = [line for line in lines(text) if len(line) > WIDTH]
    assert not too_long, too_long
    assert "…" not in text  # rich cuts what does not fit with an ellipsis


def test_train_help_is_at_most_120_lines(helps):
    assert len(helps["train"].splitlines()) <= 120


def test_train_help_at_80_columns_in_a_terminal_like_run():
    """The issue's own check, as a user runs it: COLUMNS=80 csc train --help."""
    env = {k: v for k, v in os.environ.items() if k != "TERMINAL_WIDTH"}
    out = subprocess.run([sys.executable, "-m", "csc_cli", "train", "--help"], capture_output=True, text=True,
                         timeout=120, env={**env, "COLUMNS": str(WIDTH)})
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) <= 120
    assert max(len(line.rstrip()) for line in out.stdout.splitlines()) <= WIDTH


@pytest.mark.parametrize("name", PANELS)
def test_options_are_grouped_into_panels(helps, name):
    titles = re.findall(r"^╭─ (.+?) ─", helps[name], flags=re.M)
    assert titles == PANELS[name]


@pytest.mark.parametrize("name", PANELS)
def test_every_option_is_listed_whole(helps, name):
    text = helps[name]
    for param in GROUP.commands[name].params:
        for opt in [*param.opts, *param.secondary_opts]:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), (name, opt)


@pytest.mark.parametrize("name, option, default", DEFAULTS)
def test_defaults_are_still_shown(helps, name, option, default):
    assert default in option_block(helps[name], option)


def test_command_summaries_are_one_line_sentences(helps):
    rows = re.search(r"╭─ Commands ─.*?\n(.*?)╰", helps["csc"], flags=re.S).group(1).splitlines()
    assert len(rows) == len(COMMANDS)  # one line each: none wraps at 80 columns
    for row, name in zip(rows, COMMANDS):
        summary = row.strip("│ ")
        assert summary.startswith(name) and summary.endswith("."), row


@pytest.mark.parametrize("name", ["csc", *PANELS])
def test_help_ends_with_real_examples_unwrapped(helps, name):
    command = GROUP if name == "csc" else GROUP.commands[name]
    expected = Text.from_markup(command.epilog).plain.splitlines()
    text = lines(helps[name])
    start = text.index(" Examples")
    shown = [line[1:] for line in text[start:] if line]
    assert shown == expected  # every line as written: no example broken by the terminal's wrapping
    assert not any(line.startswith(("╭", "│", "╰")) for line in text[start:])  # the last section
    examples = []  # the commands: indented by 2, continued (after a backslash) indented by 6
    for line in expected:
        if line.startswith("      "):
            assert examples and examples[-1].endswith(" \\"), line
            examples[-1] = examples[-1][:-1] + line.strip()
        elif line.startswith("  "):
            examples.append(line.strip())
    assert 2 <= len(examples) <= 3, examples
    for example in examples:
        assert example.startswith(("csc ", "python -m csc_cli ")) and not example.endswith("\\"), example
        words = example.replace("python -m csc_cli", "csc", 1).split()
        sub = words[1]
        target = GROUP if sub.startswith("-") else GROUP.commands[sub]
        assert name in ("csc", sub), example
        known = {opt for p in target.params for opt in [*p.opts, *p.secondary_opts]} | {"--help"}
        for word in words:
            if word.startswith("-"):
                assert word in known, (example, word)
            if word.startswith("recipes/"):
                assert (ROOT / word).is_file(), (example, word)


def test_shell_lines_keep_options_whole_and_fit():
    command = ("csc attack runs/digits-resnet20_cifar-stem/model.safetensors --lambda 0.4 "
               "--baseline runs/digits-resnet20_cifar-none/model.safetensors")
    out = shell_lines(command)
    assert len(out) > 1 and all(len(line) <= EXAMPLE_WIDTH for line in out)
    assert " ".join(line.strip().rstrip("\\").strip() for line in out) == command
    assert all(line.startswith("      --") for line in out[1:])
    assert shell_lines("csc train") == ["  csc train"]


def test_paragraphs_join_lines_and_keep_paragraphs():
    doc = """Summary line.

    A paragraph
    over two lines.

    Another.
    """
    assert paragraphs(doc) == "Summary line.\n\nA paragraph over two lines.\n\nAnother."


def test_bare_csc_prints_the_help_and_succeeds():
    """`csc` with no arguments answers with the top-level help and exit 0 (it used to print the help,
    then an empty 'error:' line, and exit 1)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "csc_cli"], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    assert "Usage: csc" in done.stdout and "error" not in done.stderr
