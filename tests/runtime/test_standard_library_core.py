"""The sampler core must import and run with the standard library alone (it runs unchanged in
Pyodide): block every package outside the standard library, then import and use it.

The modules are the ones the browser loads, read from the import graph by the contract that keeps
them standard library only (pyproject.toml, tests/import_contracts.py), so a new one is never missed.
"""

import subprocess
import sys

from tests.import_contracts import standard_library_modules

SCRIPT = """
import importlib.abc
import sys

OWN = {{"runtime", "ruvdllm", "tests"}}


class StandardLibraryOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in sys.stdlib_module_names and top not in OWN:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not standard library)", name=name)
        return None  # let the usual finders find it


sys.meta_path.insert(0, StandardLibraryOnly())
import importlib
for name in {core!r}:
    importlib.import_module(name)
import random
from runtime.index import make_index
from runtime.generate import generate, default_control
from runtime.settings import GenerationSettings
from tests.runtime.toy_backend import ToyBackend
index = make_index(8)
assert type(index).__name__ == "ExactIndex", type(index)
result = generate(ToyBackend(), [1, 2], GenerationSettings(length=6), random.Random(0))
print(len(result.trace))
"""


def test_the_core_is_what_the_browser_loads():
    core = set(standard_library_modules())
    # a sample (the list itself comes from the graph): the browser's entry points and what they drive
    assert {"runtime", "runtime.pyodide_backend", "runtime.model", "runtime.bd3lm"} <= core
    assert "runtime.ort_backend" not in core and "runtime.server.app" not in core


def test_core_runs_without_third_party_packages():
    script = SCRIPT.format(core=standard_library_modules())
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) >= 2
