"""README.md and docs/*.md stay true: every code block is fenced and named, every Python block runs
(a page's blocks in order, in one namespace, in a fresh folder), every command of a shell block parses
against the real CLI -- every option exists, every value converts, every closed choice is valid --
and every file, recipe, make target and link it names exists."""

import os
import re
import shlex
from pathlib import Path

import pytest
import typer

try:  # typer >= 0.22 carries its own copy of click
    from typer._click import exceptions as clickexc
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as clickexc

from csc_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "sh", "text"}
GROUP = typer.main.get_command(app)
# Python blocks a test beside the code they show runs instead, with what they need (a model file):
RUN_ELSEWHERE = {"docs/export.md": "tests/test_export.py::test_the_docs_snippet_runs_as_written"}


def rel(page):
    return page.relative_to(ROOT).as_posix()


def blocks(page):
    """``(language, text, first line number)`` of every fenced block of a page."""
    found, lang, start, body = [], None, 0, []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), number, []
            else:
                found.append((lang, "\n".join(body) + "\n", start))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{rel(page)}: the block opened on line {start} is never closed"
    return found


def commands(text):
    """A shell block's commands: continuation lines joined, comments and blank lines dropped."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def test_the_docs_exist_one_page_per_command_and_one_for_python():
    names = {p.stem for p in PAGES[1:]}
    assert set(GROUP.commands) - {"demo", "version"} <= names, "a command without its docs/ page"
    assert {"python", "cli"} <= names  # the Python API; the shared conventions, `csc demo`, `csc version`


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for command in ("make demo", "make test", "csc train cifar10 --arch resnet18", "csc convert timm:resnet50",
                    "csc attack MODEL --eps 8/255"):
        assert command in text, command
    for page in PAGES[1:]:
        assert f"]({rel(page)})" in text, f"the README does not link {rel(page)}"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_link_and_picture_exists(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if not re.match(r"[a-z]+://", target):
            assert (page.parent / target).exists(), f"{rel(page)} links {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_code_block_is_fenced_and_named(page):
    lines, fenced, previous = page.read_text().splitlines(), False, ""
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("    ") and not previous.strip():
            pytest.fail(f"{rel(page)}:{number}: an indented code block; fence it (```sh, ```python or ```text)")
        previous = line
    for lang, _, start in blocks(page):
        assert lang in LANGUAGES, f"{rel(page)}:{start}: a block of {lang or 'no language'}"


@pytest.mark.parametrize("page", [p for p in PAGES if any(b[0] == "python" for b in blocks(p))], ids=rel)
def test_every_python_block_runs(page, tmp_path, monkeypatch):
    if rel(page) in RUN_ELSEWHERE:
        file, name = RUN_ELSEWHERE[rel(page)].split("::")
        assert f"def {name}(" in (ROOT / file).read_text(), f"{RUN_ELSEWHERE[rel(page)]} is gone"
        pytest.skip(f"runs in {RUN_ELSEWHERE[rel(page)]} (it needs an exported model)")
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "__docs__"}
    for lang, text, start in blocks(page):
        if lang == "python":
            exec(compile("\n" * (start) + text, str(page), "exec"), scope)  # line numbers as in the page


def check_paths(page, words):
    for word in words:
        for path in re.findall(r"(?:^|=)((?:recipes|docs|benchmarks|tests|csc_cli)/[\w./-]+)", word):
            assert (ROOT / path).exists(), f"{rel(page)}: {' '.join(words)} names {path}, which does not exist"


def parse(words, cwd):
    """Parse ``csc WORDS`` as the CLI would, without running the command. Files the command needs to
    exist (a model file, or a placeholder such as MODEL) are created empty in ``cwd`` first: parsing
    checks that they exist, the command would check what they hold."""
    for word in words:
        if not word.startswith("-") and re.search(r"\.(safetensors|jsonl|onnx|png|jpg)$|^runs/|^[A-Z][A-Z_]+$", word):
            path = cwd / word
            if word.startswith("runs/") and not path.suffix:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    try:
        ctx = GROUP.make_context("csc", list(words))
        pending = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
        name, command, rest = GROUP.resolve_command(ctx, pending)
        command.make_context(name, rest, parent=ctx)
    except (getattr(clickexc, "Exit", typer.Exit), typer.Exit) as exc:  # --help
        assert exc.exit_code == 0


@pytest.mark.parametrize("page", [p for p in PAGES if any(b[0] == "sh" for b in blocks(p))], ids=rel)
def test_every_command_of_a_shell_block_parses(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    checked = 0
    for lang, text, start in blocks(page):
        if lang != "sh":
            continue
        for words in commands(text):
            where = f"{rel(page)}:{start}: {' '.join(words)}"
            check_paths(page, words)
            if words[0] in ("csc", ".venv/bin/csc"):
                args = words[1:]
            elif words[0] == "torchrun":
                args = words[words.index("csc_cli") + 1:]
            elif words[:3] == ["python", "-m", "csc_cli"]:
                args = words[3:]
            elif words[0] == "make":
                assert set(words[1:]) <= targets, where
                checked += 1
                continue
            elif words[0] in ("python", "python3"):
                assert (ROOT / words[1]).is_file(), where
                checked += 1
                continue
            elif words[0] == "pip":
                continue
            else:
                pytest.fail(f"{where}: not a command this test knows how to check")
            try:
                parse(args, tmp_path)
            except clickexc.ClickException as exc:
                pytest.fail(f"{where}: {exc.format_message()}")
            checked += 1
    capsys.readouterr()
    assert checked, f"{rel(page)}: shell blocks without a command"


def test_the_checker_catches_a_wrong_command(tmp_path, monkeypatch):
    """What the parse test relies on: an unknown option, a bad choice and a bad value each fail."""
    monkeypatch.chdir(tmp_path)
    for words in (["train", "--no-such-option"], ["train", "--amp", "fp8"], ["eval", "m.safetensors",
                                                                              "--batch-size", "many"],
                  ["no-such-command"]):
        with pytest.raises(clickexc.ClickException):
            parse(words, tmp_path)
    parse(["train", "--amp", "bf16"], tmp_path)
    assert os.path.exists(tmp_path / "m.safetensors")  # the placeholder the parse of `eval` created


def test_the_eval_page_names_every_corruption_and_group():
    """`csc eval --help` sends the reader to docs/eval.md for the names."""
    from csc_cli.data.corruptions import ALL, EXTRA, NOISES, STANDARD

    text = (ROOT / "docs" / "eval.md").read_text()
    for name in [*ALL, "standard", "extra", "noise", "all"]:
        assert f"`{name}`" in text, name
    assert len(ALL) == 19 and set(NOISES) <= set(ALL) and not set(STANDARD) & set(EXTRA)
