"""The default model (SmolLM2-135M-Instruct with the shipped conversion adapter), exported once per
target into the user cache and found there again.

The cache directory is named by a fingerprint of what the export reads: the exporter's source and
the shipped adapters. Upgrading either exports afresh instead of reusing a graph the old code wrote.

Why this lives in the command layer (`ruvdllm`), not in `runtime`: finding the default model needs
only the runtime (the artifact format, the user cache), but exporting it on first use needs the
exporter, and `runtime` must never import `ruvdllm_export` (the layers are checked in CI). The
runtime's commands that run a model (`generate`, `serve`, `web`) therefore take this step as an
argument, `run(args, default_model=...)`, and `ruvdllm.cli` hands them `default_model_dir`: the
dependency on the exporter is written where both parts are wired together, and nowhere below.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from runtime.artifact import ARTIFACT_FORMAT, MANIFEST_NAME
from runtime.verify import cache_root
from ruvdllm.errors import RuvdllmError

DEFAULT_MODEL_STEM = "smollm2-135m-instruct"
# what the default export reads: source, the conversion adapter and the answer store
SHIPPED_SUFFIXES = (".py", ".safetensors", ".ngrams")
# Subpackages the export never imports (loop B's first-order trainer): a change there must not
# re-export the default model (110 MB and a minute or more each time).
NOT_READ_BY_EXPORT = ("learning",)


def exporter_fingerprint() -> str | None:
    """12 hex digits of sha256 over the exporter package's files (source and shipped adapters);
    None when the exporter is not installed (a runtime-only install cannot export)."""
    spec = importlib.util.find_spec("ruvdllm_export")
    if spec is None or not spec.submodule_search_locations:
        return None
    return source_fingerprint(Path(next(iter(spec.submodule_search_locations))))


def source_fingerprint(root: Path) -> str:
    """12 hex digits of sha256 over the names and bytes of the files under `root` the export reads."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in NOT_READ_BY_EXPORT or "__pycache__" in relative.parts:
            continue
        if path.is_file() and path.suffix in SHIPPED_SUFFIXES:
            digest.update(relative.as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def default_model_prefix(target: str) -> str:
    return f"{DEFAULT_MODEL_STEM}-{target}-format{ARTIFACT_FORMAT}-"


def default_model_name(target: str = "cpu") -> str | None:
    """The cache directory name this installation exports the default model to (None: cannot export)."""
    fingerprint = exporter_fingerprint()
    return None if fingerprint is None else default_model_prefix(target) + fingerprint


def default_model_dir(target: str = "cpu", progress: bool = True) -> Path:
    """The default model exported for `target`, exporting it on first use."""
    artifacts = cache_root() / "artifacts"
    name = default_model_name(target)
    if name is None:
        # Without the exporter, use the newest default model an exporter left in the cache.
        found = [
            p for p in artifacts.glob(default_model_prefix(target) + "*") if (p / MANIFEST_NAME).is_file()
        ]
        if found:
            return max(found, key=lambda p: (p / MANIFEST_NAME).stat().st_mtime)
        raise RuvdllmError(
            "no model given and the default model is not exported yet; exporting needs the exporter: "
            "pip install 'ruvdllm[export]' (or pass a model directory)"
        )
    directory = artifacts / name
    if (directory / MANIFEST_NAME).is_file():
        return directory
    from ruvdllm_export.adapters import DEFAULT_ADAPTER, DEFAULT_ANSWER_STORE
    from ruvdllm_export.default_model import default_gguf_path
    from ruvdllm_export.export import export_model

    if progress:
        print(f"exporting the default model once for {target} into {directory} ...", file=sys.stderr)
    artifacts.mkdir(parents=True, exist_ok=True)
    log = (lambda *parts: print(*parts, file=sys.stderr)) if progress else None
    export_model(
        default_gguf_path(progress=progress),
        directory,
        target=target,
        adapter=DEFAULT_ADAPTER,
        answer_store=DEFAULT_ANSWER_STORE,
        # The shipped TALoRA banks (adapters.DEFAULT_BANKS) are left out on purpose: they lower
        # held-out NLL slightly but measured worse generative perplexity (docs/conversion.md).
        log=log,
    )
    return directory
