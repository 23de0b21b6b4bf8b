"""Check a model directory against its manifest before loading it, fast on every later load.

Sizes are always checked. Full sha256 hashing of a ~100 MB graph takes a noticeable fraction of
a second, so a file whose (size, mtime, inode) match the last successful check is not hashed
again; any write to it changes mtime and forces a re-hash. The record lives in the user cache
($RUVDLLM_CACHE or platformdirs' cache dir for "ruvdllm"), `verified.json`.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime import artifact
from runtime.cache_record import read_record, write_record
from ruvdllm.errors import RuvdllmError

MODES = ("cached", "full", "sizes")


def cache_root() -> Path:
    override = os.environ.get("RUVDLLM_CACHE")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ruvdllm"))


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def verify_artifact(directory: Path, mode: str = "cached") -> dict:
    """Raise RuvdllmError naming the first file that is missing, resized or (unless mode is
    "sizes") differs from its manifest hash. Returns the manifest."""
    if mode not in MODES:
        raise RuvdllmError(f"verify mode {mode!r}: choose from {', '.join(MODES)}")
    directory = Path(directory).resolve()
    manifest = artifact.verify_manifest(directory, full_hash=False)
    if mode == "sizes":
        return manifest
    record_path = cache_root() / "verified.json"
    record = read_record(record_path) if mode == "cached" else {}
    changed = False
    for rel, entry in manifest["files"].items():
        path = directory / rel
        key = str(path)
        stamp = _stamp(path)
        known = record.get(key)
        if known and known["stamp"] == stamp and known["sha256"] == entry["sha256"]:
            continue
        if artifact.sha256_file(path) != entry["sha256"]:
            record.pop(key, None)
            raise RuvdllmError(f"{path}: sha256 does not match the manifest (corrupt or modified)")
        record[key] = {"stamp": stamp, "sha256": entry["sha256"]}
        changed = True
    if changed:
        write_record(record_path, record)  # a read-only cache only costs a re-hash next time
    return manifest
