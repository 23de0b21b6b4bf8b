"""A JSON record kept in the user cache (the verification record, the row cost): read as empty
when missing or damaged, replaced atomically, and never an error — a record that cannot be read
or written only costs the next run the work it would have saved. Standard library only."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_record(path: Path) -> dict:
    """The JSON object at `path`; {} when the file is missing, unreadable or not an object."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(path: Path, record: dict) -> None:
    """Replace the file at `path` with `record`: a concurrent reader sees the old file or the new
    one. Failure to write (a read-only cache) is ignored."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(partial, path)
    except OSError:
        pass
