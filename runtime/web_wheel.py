"""The wheel Pyodide installs in the browser: the runtime modules the client runs, and nothing else.

What goes in is computed from the import graph, not listed: the modules the client's JavaScript
imports (ENTRY_MODULES) and every first-party module they import at module level, transitively,
with their parent packages. Imports inside functions are CPython-only by the runtime's convention
(the onnxruntime backend, tokenizers, jinja2, hnswlib) and stay out, as do the command modules
(the CLI, the HTTP server, this builder). A test holds ENTRY_MODULES to what web/js names.

How it is built: those files are copied into a staging directory beside a minimal pyproject.toml
and built by setuptools through `pip wheel --no-deps --no-build-isolation --no-index`, which never
touches the network. SOURCE_DATE_EPOCH fixes the zip timestamps, so identical sources give
byte-identical wheels: browsers and the service worker key on its bytes. A build takes a couple of
seconds, so `ruvdllm web` keeps the wheel in the user cache under a hash of its inputs and builds
only when one of them changed. setuptools >= 70.1 (the first to write wheels without the `wheel`
package) is in the `runtime` extra: a plain virtual environment has pip, and no setuptools (Python
3.12+) or one too old to build wheels alone (3.10/3.11 venvs carry 65).

Why not pyodide-build (`pyodide build`), the tool Pyodide documents: before building anything,
pure-Python packages included, it downloads Pyodide's cross-build environment from GitHub, so it
cannot build offline; and for a pure-Python package its output is the same py3-none-any wheel that
pip and setuptools write. (Checked with pyodide-build 0.25.1, the newest the project's package index
offers; its value is cross-compiling C extensions, which the runtime has none of.)
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ruvdllm.errors import RuvdllmError

DIST_NAME = "ruvdllm_runtime"  # distinct from the full `ruvdllm` distribution: only the browser's modules
# web/js/python.js runs `import runtime`; web/js/worker.js pyimports runtime.pyodide_backend.
ENTRY_MODULES = ("runtime", "runtime.pyodide_backend")
FIRST_PARTY = ("runtime", "ruvdllm")  # packages whose modules may go in; the rest is stdlib or Pyodide's
MIN_SETUPTOOLS = (70, 1)  # the first to write wheels itself, without the `wheel` package
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip can hold
PYPROJECT = """\
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "{version}"
description = "RuvDLLM runtime modules for Pyodide (standard library only)"
requires-python = ">=3.10"

[tool.setuptools]
packages = [{packages}]
"""


def runtime_version() -> str:
    """The installed ruvdllm version (the wheel is versioned with the project it came from)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ruvdllm")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def wheel_name(version: str) -> str:
    return f"{DIST_NAME}-{version}-py3-none-any.whl"


# --- which modules: the import graph ------------------------------------------------------------


def _package_dir(top: str) -> Path:
    spec = importlib.util.find_spec(top)  # finds without importing
    if spec is None or not spec.submodule_search_locations:
        raise RuvdllmError(f"{top}: package not found, cannot build the browser wheel")
    return Path(next(iter(spec.submodule_search_locations)))


def module_file(name: str) -> Path | None:
    """The source file of first-party module `name` (a package's __init__.py), or None."""
    top, *rest = name.split(".")
    if top not in FIRST_PARTY:
        return None
    base = _package_dir(top).joinpath(*rest)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_imports(source: str, name: str, is_package: bool) -> set[str]:
    """Absolute names a module imports when it is imported: statements at module level and in class
    bodies, including if/try/with blocks; not inside functions, not under `if TYPE_CHECKING`.
    `from a import b` yields both `a` and `a.b` (b may be a submodule)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    pending: list[ast.AST] = list(ast.parse(source).body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        else:
            pending.extend(ast.iter_child_nodes(node))
    return found


def browser_modules(entries: tuple[str, ...] = ENTRY_MODULES) -> dict[str, Path]:
    """Every first-party module the entries load at import time, transitively: name -> source file."""
    modules: dict[str, Path] = {}
    pending = list(entries)
    while pending:
        name = pending.pop()
        path = module_file(name)
        if name in modules or path is None:
            continue
        modules[name] = path
        parents = [name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)]
        imports = import_time_imports(path.read_text(), name, path.name == "__init__.py")
        pending.extend(parents + sorted(imports))
    return dict(sorted(modules.items()))


# --- building ------------------------------------------------------------------------------------


def wheel_sources(entries: tuple[str, ...] = ENTRY_MODULES) -> list[tuple[str, bytes]]:
    """(path inside the wheel, bytes) of every module the browser loads, sorted."""
    files = []
    for name, path in browser_modules(entries).items():
        rel = name.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
        files.append((rel, path.read_bytes()))
    return sorted(files)


def _pyproject(version: str, files: list[tuple[str, bytes]]) -> str:
    packages = sorted({rel.rpartition("/")[0].replace("/", ".") for rel, _ in files})
    return PYPROJECT.format(name=DIST_NAME, version=version, packages=", ".join(f'"{p}"' for p in packages))


def sources_key(version: str | None = None) -> str:
    """Hash of everything the wheel is built from: the cache key of a built wheel."""
    version = version or runtime_version()
    files = wheel_sources()
    digest = hashlib.sha256(_pyproject(version, files).encode())
    for rel, data in files:
        digest.update(f"\0{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def build_wheel(out_dir: Path, version: str | None = None) -> Path:
    """Build the wheel afresh into `out_dir` and return its path."""
    version = version or runtime_version()
    files = wheel_sources()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ruvdllm-wheel-") as tmp:
        staging, built = Path(tmp) / "src", Path(tmp) / "dist"
        for rel, data in files:
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(0o644)  # the zip records modes: independent of the umask
        (staging / "pyproject.toml").write_text(_pyproject(version, files))
        _pip_wheel(staging, built)
        (wheel,) = built.glob("*.whl")
        return Path(shutil.move(wheel, out_dir / wheel.name))


def _check_backend() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("setuptools")
    except PackageNotFoundError:
        found = None
    if found is None or tuple(int(part) for part in re.findall(r"\d+", found)[:2]) < MIN_SETUPTOOLS:
        raise RuvdllmError(
            f"building the browser wheel needs setuptools>=70.1 (found: {found or 'none'}); "
            "pip install 'ruvdllm[runtime]'"
        )


def _pip_wheel(source: Path, out_dir: Path) -> None:
    _check_backend()
    # The user's pip configuration (indexes, constraints) has no say in a build that fetches nothing.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_CONFIG_FILE": os.devnull, "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    command += ["--disable-pip-version-check", "--quiet", "--wheel-dir", str(out_dir), str(source)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=source)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuvdllmError(f"building the browser wheel with pip failed: {' / '.join(detail)}")


def cached_wheel(cache_dir: Path | None = None) -> Path:
    """The wheel for the current sources, built on first use and kept under `cache_dir`
    (default: the user cache's web-wheels/<hash of the sources>/)."""
    if cache_dir is None:
        from runtime.verify import cache_root

        cache_dir = cache_root() / "web-wheels"
    version = runtime_version()
    final = Path(cache_dir) / sources_key(version) / wheel_name(version)
    if not final.is_file():
        with tempfile.TemporaryDirectory(prefix=".building-", dir=_mkdir(final.parent)) as tmp:
            os.replace(build_wheel(Path(tmp), version), final)  # atomic: a reader never sees half a wheel
    return final


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
