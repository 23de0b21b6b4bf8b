"""The import contracts in pyproject.toml (`[tool.importlinter]`): who may import whom, checked over
the real import graph, imports inside functions included. The first test is the check CI runs; the
others prove that each contract breaks when a copy of the tree gets one import it forbids."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ruvdllm", "runtime", "ruvdllm_export", "federation_hub")
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter over the tree at `root` with its pyproject.toml (run there: the tree under test is
    the one imported, not the installed one)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_import_contracts_hold():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def not_python_source(folder: str, names: list[str]) -> list[str]:
    return [
        n for n in names if n == "__pycache__" or ((Path(folder) / n).is_file() and not n.endswith(".py"))
    ]


def copy_of_the_tree(target: Path) -> Path:
    """The packages' Python sources, the contracts' configuration and the custom contract type."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, target / package, ignore=not_python_source)
    (target / "tests").mkdir()
    for name in ("__init__.py", "import_contracts.py"):
        shutil.copy(ROOT / "tests" / name, target / "tests" / name)
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


# (module to edit, the import added, the one contract it breaks)
VIOLATIONS = {
    "the browser core reaches numpy through a lazy import": (
        "runtime/sampling.py",
        "def _violation():\n    import numpy  # noqa: F401\n",
        "The runtime core the browser loads imports only the standard library",
    ),
    "runtime imports torch": (
        "runtime/server/app.py",
        "def _violation():\n    import torch  # noqa: F401\n",
        "runtime never imports the exporter, the hub or torch",
    ),
    "the hub imports runtime": (
        "federation_hub/tiers.py",
        "import runtime.artifact  # noqa: F401,E402\n",
        "The hub never imports torch, runtime or the exporter",
    ),
    "the exporter imports the hub": (
        "ruvdllm_export/spec.py",
        "import federation_hub.tiers  # noqa: F401,E402\n",
        "Layers: the command layer > the exporter | the hub > runtime > the shared error type",
    ),
}


@pytest.mark.parametrize("violation", list(VIOLATIONS))
def test_a_forbidden_import_breaks_its_contract(violation, tmp_path):
    path, added, contract = VIOLATIONS[violation]
    tree = copy_of_the_tree(tmp_path)
    with open(tree / path, "a") as module:
        module.write("\n\n" + added)
    run = lint_imports(tree)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{contract} BROKEN" in run.stdout, run.stdout
    assert re.search(r"Contracts: \d+ kept, 1 broken", run.stdout), run.stdout  # that one, no other
