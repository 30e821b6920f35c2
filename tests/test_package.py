"""The package's public surface: what the README and docs/ call exists."""

import importlib
import re

import csc_cli
from tests.test_docs import PAGES


def test_every_csc_cli_call_in_the_docs_exists():
    names = set(re.findall(r"csc_cli\.([A-Za-z_][\w.]*)\(", "\n".join(p.read_text() for p in PAGES)))
    assert {"build_model", "load", "save", "convert"} <= names
    for name in sorted(names):
        obj, path = csc_cli, "csc_cli"
        for part in name.split("."):
            path += "." + part
            found = getattr(obj, part, None)
            if found is None:  # a submodule the package does not import eagerly
                try:
                    found = importlib.import_module(path)
                except ImportError:
                    found = None
            assert found is not None, f"the docs call csc_cli.{name}, which does not exist"
            obj = found
        assert callable(obj), name
