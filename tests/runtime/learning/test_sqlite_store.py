"""The SQLite trajectory store on real files: round trips, restarts, a writer killed mid-transaction,
a corrupt file moved aside."""

import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from runtime.learning.sqlite_store import SCHEMA_VERSION, SqliteStore
from runtime.learning.trajectory import Trajectory, make_feedback
from ruvdllm.errors import RuvdllmError


def trajectory(i: int, prompt: str = "Hello") -> Trajectory:
    return Trajectory(
        id=f"cmpl-{i}",
        created=1000.0 + i,
        model="tiny",
        bank="/banks",
        prompt=prompt,
        prompt_tokens=[1, 2, i],
        embedding=[0.5, -0.25, float(i)],
        settings={"sampler": "bd3lm", "length": 8},
        steps=[{"t": 1.0, "entropy": 2.5, "patterns": [[3, 0.9]]}],
        patterns=[3],
        answer=f"answer {i}",
        answer_tokens=[7, 8],
        finish_reason="length",
        timings={"wall_ms": 12.5, "forward_ms": 10.0, "steps": 1},
    )


def test_round_trip_survives_reopening(tmp_path):
    path = tmp_path / "deep" / "trajectories.db"
    store = SqliteStore(path)
    store.add_trajectory(trajectory(1))
    store.add_feedback(make_feedback("cmpl-1", rating=4))
    store.add_feedback(make_feedback("cmpl-1", correction="better"))
    store.close()
    again = SqliteStore(path)
    assert again.trajectory("cmpl-1") == trajectory(1)  # the float32 embedding holds these exactly
    kinds = [(f.kind, f.rating, f.correction, f.value) for f in again.feedback_for("cmpl-1")]
    assert kinds == [("rating", 4.0, None, 0.5), ("correction", None, "better", -0.5)]
    assert again.trajectory("cmpl-2") is None and again.count() == 1
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_feedback_for_an_unknown_completion_is_refused(tmp_path):
    store = SqliteStore(tmp_path / "t.db")
    with pytest.raises(KeyError):
        store.add_feedback(make_feedback("cmpl-nope", up=True))


def test_a_corrupt_file_is_moved_aside_and_a_fresh_store_started(tmp_path):
    path = tmp_path / "trajectories.db"
    path.write_bytes(b"this is not a database, it only sits where one should be" * 100)
    warnings = []
    store = SqliteStore(path, on_warning=warnings.append)
    store.add_trajectory(trajectory(1))
    assert store.count() == 1
    aside = list(tmp_path.glob("trajectories.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")  # never deleted
    assert len(warnings) == 1 and "\n" not in warnings[0] and "moved aside" in warnings[0]


def damage_page(path, table: str) -> None:
    """Overwrite the b-tree root page of `table` (a real on-disk corruption, header intact)."""
    db = sqlite3.connect(path)
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * size)
        f.write(b"\xff" * size)


def filled_store(path, n: int = 50) -> None:
    store = SqliteStore(path)
    for i in range(n):
        store.add_trajectory(trajectory(i))
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the rows in the main file, not the WAL
    store.close()


@pytest.mark.parametrize(
    "table, when",
    [("sqlite_autoindex_trajectories_1", "opening"), ("trajectories", "the next write")],
)
def test_a_malformed_store_is_moved_aside_on_opening_or_the_next_write(tmp_path, table, when):
    """The id index is read on opening (count(*) uses it); the table itself only when written."""
    path = tmp_path / "trajectories.db"
    filled_store(path)
    damage_page(path, table)
    warnings = []
    store = SqliteStore(path, on_warning=warnings.append)
    assert (warnings == []) == (when == "the next write")
    store.add_trajectory(trajectory(999))
    assert store.count() == 1 and store.trajectory("cmpl-999") is not None
    assert len(warnings) == 1 and "malformed" in warnings[0] and "\n" not in warnings[0]
    assert len(list(tmp_path.glob("trajectories.db.corrupt-*"))) == 1


def test_a_newer_schema_is_left_alone(tmp_path):
    path = tmp_path / "t.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuvdllmError, match="newer than this version"):
        SqliteStore(path)
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))


WRITER = """
import sys
from tests.runtime.learning.test_sqlite_store import trajectory
from runtime.learning.sqlite_store import SqliteStore

store = SqliteStore(sys.argv[1])
big = "x" * 200_000  # long transactions: the kill lands inside one
i = 0
while True:
    store.add_trajectory(trajectory(i, prompt=big))
    print(i, flush=True)  # committed
    i += 1
"""


def test_a_writer_killed_mid_transaction_loses_nothing_committed(tmp_path):
    path = tmp_path / "trajectories.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    committed = -1
    try:
        while committed < 30:
            line = writer.stdout.readline()
            assert line, writer.stderr.read()
            committed = int(line)
        time.sleep(0.013)  # somewhere inside a later transaction
        writer.send_signal(signal.SIGKILL)
        for line in writer.stdout:  # commits reported before the kill
            committed = int(line)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    store = SqliteStore(path)
    assert store.count() >= committed + 1
    for i in range(committed + 1):
        assert store.trajectory(f"cmpl-{i}").answer == f"answer {i}"
    store.add_trajectory(trajectory(10_000))  # and it takes new writes
    assert not list(tmp_path.glob("*.corrupt-*"))
