"""runtime/web_wheel.py: the pure-Python wheel Pyodide installs is a valid wheel (pip installs it),
holds the runtime package (and the shared error type) and nothing else, and is byte-for-byte reproducible."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from runtime.web_wheel import DIST_NAME, build_wheel, build_wheel_bytes


def test_wheel_is_reproducible():
    assert build_wheel_bytes() == build_wheel_bytes()


def test_wheel_holds_only_the_runtime_package(tmp_path):
    path = build_wheel(tmp_path)
    assert path.name.startswith(f"{DIST_NAME}-") and path.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(path).namelist()
    packages = {n.split("/")[0] for n in names}
    assert packages == {"runtime", "ruvdllm", path.name.split("-py3")[0] + ".dist-info"}
    assert "runtime/artifact.py" in names and "runtime/web_command.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_pip_installs_and_python_imports_the_wheel(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
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
    probe = "import runtime.artifact as a; print(a.__file__)"
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {probe}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.stdout.strip().startswith(str(target))
