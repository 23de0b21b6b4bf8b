"""The trajectory store on SQLite (CPython): runtime.learning.store.TrajectoryStore over one file.

Durability: SQLite in WAL mode, one transaction per write. A process killed mid-write (SIGKILL,
a crash) loses at most the transaction in flight; every committed row is there on reopening.
`synchronous = NORMAL` (the WAL default recommendation) may lose the last transactions on a power
cut, never the database. A file SQLite cannot read (not a database, malformed) is moved aside —
never deleted — with a one-line warning, and a fresh store takes its place.

Schema version in `PRAGMA user_version`; a newer version than this code's is left alone (a newer
ruvdllm wrote it) and recording is refused with a one-line reason.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path

from runtime.learning.store import move_aside, warn
from runtime.learning.trajectory import Feedback, Trajectory
from ruvdllm.errors import RuvdllmError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS trajectories (
    id TEXT PRIMARY KEY,          -- the completion id the caller got
    created REAL NOT NULL,        -- unix time
    model TEXT NOT NULL,
    bank TEXT,                    -- adapter bank directory the pattern ids refer to
    prompt TEXT NOT NULL,
    prompt_tokens TEXT NOT NULL,  -- JSON list of ids
    embedding BLOB,               -- float32 little-endian: the first span row's query vector
    settings TEXT NOT NULL,       -- JSON: GenerationSettings
    steps TEXT NOT NULL,          -- JSON: per-step summaries (trajectory.step_summary)
    patterns TEXT NOT NULL,       -- JSON: DGR patterns any step used
    answer TEXT NOT NULL,
    answer_tokens TEXT NOT NULL,  -- JSON list of ids
    finish_reason TEXT NOT NULL,
    timings TEXT NOT NULL         -- JSON: wall_ms, forward_ms, steps
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    completion_id TEXT NOT NULL REFERENCES trajectories(id),
    created REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rating', 'up', 'down', 'correction')),
    rating REAL,
    value REAL NOT NULL,          -- the feedback as one number in [-1, 1]
    correction TEXT
);
CREATE INDEX IF NOT EXISTS feedback_completion ON feedback (completion_id);
"""


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """Damage to the file itself, as opposed to a locked database, a full disk or a bad query."""
    message = str(exc).lower()
    return "not a database" in message or "malformed" in message or "file is encrypted" in message


class SqliteStore:
    """TrajectoryStore over one SQLite file. One connection, used from one thread at a time (the
    recorder's writer thread)."""

    def __init__(self, path: Path | str, on_warning: Callable[[str], None] = warn):
        self.path = Path(path)
        self.on_warning = on_warning
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuvdllmError(f"{self.path.parent}: cannot create ({exc.strerror or exc})") from None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if not (is_corruption(exc) and self.path.exists()):
                raise RuvdllmError(f"{self.path}: cannot open the trajectory store ({exc})") from None
            move_aside(self.path, f"unreadable trajectory store ({exc})", on_warning)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuvdllmError(
                    f"{self.path}: trajectory store schema {version} is newer than this version's "
                    f"{SCHEMA_VERSION} (written by a newer ruvdllm)"
                )
            db.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            # Reading every table once finds a damaged header or schema now, not at the first write.
            db.execute("SELECT count(*) FROM trajectories").fetchone()
            db.execute("SELECT count(*) FROM feedback").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _recover(self, exc: sqlite3.DatabaseError) -> None:
        """A write found the file damaged: move it aside and continue on a fresh one."""
        self._db.close()
        move_aside(self.path, f"trajectory store damaged ({exc})", self.on_warning)
        self._db = self._open()

    def _write(self, sql: str, params: tuple) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            self._recover(exc)
            self._db.execute(sql, params)

    # --- TrajectoryStore -------------------------------------------------------------------------

    def add_trajectory(self, t: Trajectory) -> None:
        embedding = None
        if t.embedding is not None:
            values = array("f", t.embedding)
            if sys.byteorder == "big":
                values.byteswap()
            embedding = values.tobytes()
        self._write(
            "INSERT OR REPLACE INTO trajectories VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                t.id,
                t.created,
                t.model,
                t.bank,
                t.prompt,
                json.dumps(t.prompt_tokens),
                embedding,
                json.dumps(t.settings),
                json.dumps(t.steps, separators=(",", ":")),
                json.dumps(t.patterns),
                t.answer,
                json.dumps(t.answer_tokens),
                t.finish_reason,
                json.dumps(t.timings),
            ),
        )

    def add_feedback(self, feedback: Feedback) -> None:
        if self.trajectory(feedback.completion_id) is None:
            raise KeyError(feedback.completion_id)
        self._write(
            "INSERT INTO feedback (completion_id, created, kind, rating, value, correction) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                feedback.completion_id,
                time.time(),
                feedback.kind,
                feedback.rating,
                feedback.value,
                feedback.correction,
            ),
        )

    def trajectory(self, completion_id: str) -> Trajectory | None:
        row = self._db.execute("SELECT * FROM trajectories WHERE id = ?", (completion_id,)).fetchone()
        if row is None:
            return None
        embedding = None
        if row[6] is not None:
            values = array("f")
            values.frombytes(row[6])
            if sys.byteorder == "big":
                values.byteswap()
            embedding = values.tolist()
        return Trajectory(
            id=row[0],
            created=row[1],
            model=row[2],
            bank=row[3],
            prompt=row[4],
            prompt_tokens=json.loads(row[5]),
            embedding=embedding,
            settings=json.loads(row[7]),
            steps=json.loads(row[8]),
            patterns=json.loads(row[9]),
            answer=row[10],
            answer_tokens=json.loads(row[11]),
            finish_reason=row[12],
            timings=json.loads(row[13]),
        )

    def feedback_for(self, completion_id: str) -> list[Feedback]:
        rows = self._db.execute(
            "SELECT completion_id, kind, rating, correction FROM feedback WHERE completion_id = ? ORDER BY id",
            (completion_id,),
        ).fetchall()
        return [Feedback(*row) for row in rows]

    def good_feedback(
        self, after: int, threshold: float, limit: int
    ) -> list[tuple[int, Trajectory, str | None]]:
        """Loop B's training data: (feedback id, trajectory, correction or None) for completions
        whose latest feedback, newer than feedback id `after`, is a correction or has a value of
        at least `threshold`; newest first, at most `limit` (the latest word on a completion
        counts: a thumbs-down after a thumbs-up takes it out)."""
        rows = self._db.execute(
            "SELECT f.id, f.completion_id, f.correction FROM feedback f "
            "WHERE f.id > ? AND f.id = (SELECT max(g.id) FROM feedback g WHERE g.completion_id = f.completion_id) "
            "AND (f.kind = 'correction' OR f.value >= ?) ORDER BY f.id DESC LIMIT ?",
            (after, threshold, limit),
        ).fetchall()
        out = []
        for feedback_id, completion_id, correction in rows:
            trajectory = self.trajectory(completion_id)
            if trajectory is not None:
                out.append((feedback_id, trajectory, correction))
        return out

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM trajectories").fetchone()[0]

    def close(self) -> None:
        self._db.close()
