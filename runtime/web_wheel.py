"""Build the pure-Python wheel of the `runtime` package that the browser client loads into Pyodide.

The browser runs the very same sampler, TALoRA and DGR code as CPython: Pyodide installs this wheel
with `pyodide.loadPackage(url)` (micropip is not part of the npm package and cannot be fetched
offline). `ruvdllm web` builds it at start-up and serves it; `ruvdllm web --build-wheel DIR` writes it
to a directory for a static deployment.

Why the wheel is written here with `zipfile` instead of `pip wheel` / setuptools: a pure-Python wheel
is a zip with three metadata files (PEP 427 / PEP 491), and writing it directly needs no build
backend in the user's environment (a plain venv has no setuptools), takes milliseconds at server
start, and gives byte-identical output for identical sources, so browsers and caches can key on its
hash. The test suite installs it with pip to prove the format is right.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path

DIST_NAME = "ruvdllm_runtime"  # distinct from the full `ruvdllm` distribution: only runtime/ inside
PACKAGE = "runtime"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: identical sources give identical bytes
SKIP_PARTS = {"__pycache__"}


def runtime_version() -> str:
    """The installed ruvdllm version (the wheel is versioned with the project it came from)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ruvdllm")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def package_files(package_dir: Path) -> list[tuple[str, bytes]]:
    """(archive name, bytes) of every source file of the package, sorted for reproducibility."""
    files = []
    for path in sorted(package_dir.rglob("*")):
        rel = path.relative_to(package_dir)
        if not path.is_file() or SKIP_PARTS.intersection(rel.parts) or path.suffix in {".pyc", ".pyo"}:
            continue
        files.append((f"{PACKAGE}/{rel.as_posix()}", path.read_bytes()))
    return files


def wheel_name(version: str) -> str:
    return f"{DIST_NAME}-{version}-py3-none-any.whl"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_wheel_bytes(package_dir: Path | None = None, version: str | None = None) -> tuple[str, bytes]:
    """Return (file name, wheel bytes) for the runtime package at `package_dir` (default: this one)."""
    package_dir = Path(package_dir or Path(__file__).resolve().parent)
    version = version or runtime_version()
    dist_info = f"{DIST_NAME}-{version}.dist-info"
    metadata = (
        f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {version}\n"
        "Summary: RuvDLLM sampler runtime (standard library only), for Pyodide\n"
        "Requires-Python: >=3.10\n"
    ).encode()
    wheel_meta = b"Wheel-Version: 1.0\nGenerator: ruvdllm web\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    shared = package_dir.parent / "ruvdllm"  # the error type every runtime module raises
    entries = [
        *package_files(package_dir),
        *[(f"ruvdllm/{name}", (shared / name).read_bytes()) for name in ("__init__.py", "errors.py")],
        (f"{dist_info}/METADATA", metadata),
        (f"{dist_info}/WHEEL", wheel_meta),
    ]
    entries.append((f"{dist_info}/top_level.txt", f"{PACKAGE}\nruvdllm\n".encode()))
    record_lines = [f"{name},{_record_hash(data)},{len(data)}" for name, data in entries]
    record_lines.append(f"{dist_info}/RECORD,,")
    entries.append((f"{dist_info}/RECORD", ("\n".join(record_lines) + "\n").encode()))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return wheel_name(version), buffer.getvalue()


def build_wheel(out_dir: Path, package_dir: Path | None = None) -> Path:
    """Write the wheel into `out_dir` and return its path."""
    name, data = build_wheel_bytes(package_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_bytes(data)
    return path
