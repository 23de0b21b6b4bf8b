"""The sampler core must import and run with the standard library alone (it runs unchanged in
Pyodide): block numpy, onnxruntime, hnswlib, tokenizers and rich, then import and use it."""

import subprocess
import sys

CORE = [
    "runtime.schedules",
    "runtime.sampling",
    "runtime.backend",
    "runtime.talora",
    "runtime.dgr",
    "runtime.index",
    "runtime.banks",
    "runtime.control",
    "runtime.settings",
    "runtime.denoise",
    "runtime.mdlm",
    "runtime.bd3lm",
    "runtime.generate",
]

SCRIPT = f"""
import sys
for blocked in ("numpy", "onnxruntime", "hnswlib", "tokenizers", "rich", "torch", "jinja2"):
    sys.modules[blocked] = None  # any import of these now raises ImportError
import importlib
for name in {CORE!r}:
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


def test_core_runs_without_third_party_packages():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) >= 2
