"""The package's public surface: what the README calls exists."""

import re
from pathlib import Path

import csc_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_csc_cli_call_in_the_readme_exists():
    names = set(re.findall(r"csc_cli\.([A-Za-z_][\w.]*)\(", README.read_text()))
    assert {"build_model", "load", "save", "convert"} <= names
    for name in sorted(names):
        obj = csc_cli
        for part in name.split("."):
            obj = getattr(obj, part, None)
            assert obj is not None, f"README calls csc_cli.{name}, which does not exist"
        assert callable(obj), name
