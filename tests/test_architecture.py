"""The import graph flows one way (DESIGN.md, "Layers, one way"): the import-linter contracts in
pyproject.toml hold, and no module of csc_cli is on an import cycle. Lazy imports inside functions
and TYPE_CHECKING imports count: grimp reads every import statement of a file."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp  # comes with import-linter (the test extra)

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> Path:
    tool = Path(sys.executable).parent / "lint-imports"
    assert tool.exists(), f"{tool} is missing: import-linter is in the test extra (pip install -e '.[test]')"
    return tool


def _run_contracts(cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the contracts in ``cwd``'s pyproject.toml, for the csc_cli found in ``cwd``."""
    return subprocess.run([str(_lint_imports()), "--no-cache", "--no-logo", "pyproject.toml"], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(cwd)}, capture_output=True, text=True,
                          timeout=300)


def import_cycles(graph) -> list:
    """Every import whose target leads back to its importer, as the circle it closes
    (``[a, b, ..., a]``); empty when the graph has no cycle."""
    circles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported == importer or graph.chain_exists(importer=imported, imported=importer):
                back = graph.find_shortest_chain(importer=imported, imported=importer) or (importer,)
                circles.append([importer, *back])
    return circles


def test_the_import_contracts_hold():
    result = _run_contracts(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_is_on_an_import_cycle():
    graph = grimp.build_graph("csc_cli", cache_dir=None)
    assert len(graph.modules) > 50  # the whole package was read
    circles = import_cycles(graph)
    assert not circles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_a_new_circle_is_caught(tmp_path):
    """A lazy import from a lower layer back up (layers -> jobs, inside a function) breaks the
    contracts and shows up as a cycle."""
    graph = grimp.build_graph("csc_cli", cache_dir=None)
    graph.add_import(importer="csc_cli.layers", imported="csc_cli.jobs.train")
    circles = import_cycles(graph)
    assert any(c[0] == "csc_cli.layers" and c[1] == "csc_cli.jobs.train" for c in circles), circles

    shutil.copytree(ROOT / "csc_cli", tmp_path / "csc_cli", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    layers = tmp_path / "csc_cli" / "layers.py"
    layers.write_text(layers.read_text() + "\n\ndef _borrowed():\n    from .jobs.train import run_train  # noqa: F401\n")
    result = _run_contracts(tmp_path)
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr
    assert "csc_cli.layers -> csc_cli.jobs.train" in result.stdout and "No cycles are allowed in csc_cli." in result.stdout
