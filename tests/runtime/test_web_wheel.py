"""runtime/web_wheel.py: the wheel Pyodide installs is a valid wheel (pip installs it), holds the
modules the browser imports (and the shared error type) and nothing else, and is byte-for-byte
reproducible."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from runtime.web_wheel import (
    DIST_NAME,
    ENTRY_MODULES,
    browser_modules,
    build_wheel,
    cached_wheel,
    import_time_imports,
)

WEB_JS = Path(__file__).resolve().parents[2] / "web" / "js"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return build_wheel(tmp_path_factory.mktemp("dist"))


def test_wheel_is_reproducible(wheel, tmp_path):
    assert build_wheel(tmp_path).read_bytes() == wheel.read_bytes()


def test_wheel_holds_only_the_browsers_modules(wheel):
    assert wheel.name.startswith(f"{DIST_NAME}-") and wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names}
    assert packages == {"runtime", "ruvdllm", wheel.name.split("-py3")[0] + ".dist-info"}
    for module in (
        "runtime/artifact.py",
        "runtime/pyodide_backend.py",
        "runtime/model.py",
        "ruvdllm/errors.py",
    ):
        assert module in names
    for absent in (
        "runtime/ort_backend.py",
        "runtime/web_command.py",
        "runtime/web_wheel.py",
        "ruvdllm/cli.py",
    ):
        assert absent not in names
    assert not any(n.startswith("runtime/server/") for n in names)  # the FastAPI server
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_the_entries_are_what_the_clients_javascript_imports():
    """python.js runs `import runtime`; worker.js pyimports the backend: no other module is named."""
    named = set()
    for script in WEB_JS.glob("*.js"):
        text = script.read_text()
        named.update(re.findall(r"""pyimport\(\s*['"]([\w.]+)['"]""", text))
        named.update(re.findall(r"""runPython\(\s*['"]import ([\w.]+)['"]""", text))
    assert named == set(ENTRY_MODULES)


def test_only_import_time_imports_count():
    source = (
        "import a.b\n"
        "from c import d\n"
        "from . import sibling\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import only_for_types\n"
        "try:\n    import maybe\nexcept ImportError:\n    pass\n"
        "class K:\n    import in_class\n"
        "def f():\n    import lazy\n"
    )
    found = import_time_imports(source, "pkg.mod", is_package=False)
    assert {"a.b", "c", "c.d", "pkg", "pkg.sibling", "maybe", "in_class"} <= found
    assert not {"lazy", "only_for_types"} & found


def test_the_cpython_only_backend_stays_out_though_the_model_imports_it_lazily():
    modules = browser_modules()
    assert "runtime.model" in modules and "runtime.ort_backend" not in modules


def test_cached_wheel_is_built_once_per_source(tmp_path, monkeypatch):
    first = cached_wheel(tmp_path)
    assert first.parent.parent == tmp_path and first.is_file()
    monkeypatch.setattr("runtime.web_wheel.build_wheel", lambda *a, **k: pytest.fail("built again"))
    assert cached_wheel(tmp_path) == first


def test_pip_installs_and_python_imports_the_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    probe = "import runtime.artifact as a, runtime.pyodide_backend; print(a.__file__)"
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {probe}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.stdout.strip().startswith(str(target))
