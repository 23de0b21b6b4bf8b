"""The durable trajectory store: one row per request, feedback rows linked by completion id.

`TrajectoryStore` is the interface the learning loops use; `SqliteStore` (sqlite_store.py)
implements it on CPython, where SQLite is in the standard library. In Pyodide sqlite3 is an
unvendored package and IndexedDB is the browser's durable storage, so the browser will implement
the same interface over IndexedDB; nothing here or in the recorder imports sqlite3.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from runtime.learning.trajectory import Feedback, Trajectory


class TrajectoryStore(Protocol):
    """What the learning loops need from durable storage (SQLite here, IndexedDB in the browser)."""

    def add_trajectory(self, trajectory: Trajectory) -> None: ...

    def add_feedback(self, feedback: Feedback) -> None:
        """Raises KeyError for an unknown completion id."""
        ...

    def trajectory(self, completion_id: str) -> Trajectory | None: ...

    def feedback_for(self, completion_id: str) -> list[Feedback]: ...

    def good_feedback(
        self, after: int, threshold: float, limit: int
    ) -> list[tuple[int, Trajectory, str | None]]:
        """Loop B's data: (feedback id, trajectory, correction or None) of completions whose latest
        feedback (id > `after`) is a correction or worth at least `threshold`; newest first."""
        ...

    def count(self) -> int: ...

    def close(self) -> None: ...


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def move_aside(path: Path, reason: str, on_warning: Callable[[str], None] = warn) -> Path:
    """Rename a damaged file (and SQLite's -wal/-shm companions) to `<name>.corrupt-<time>`: kept
    for inspection or recovery, out of the way of a fresh one."""
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    path.rename(target)
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.rename(target.with_name(target.name + suffix))
    on_warning(f"{path}: {reason}; moved aside to {target.name}, starting afresh")
    return target
