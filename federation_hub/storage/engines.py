"""The two engines behind `SqlStore`: SQLite (WAL) and PostgreSQL, and `open_store` to pick one."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from federation_hub.storage.base import Store
from federation_hub.storage.sql import SqlStore
from federation_hub.storage.writer_queue import WriterQueue
from ruvdllm.errors import RuvdllmError


class SqliteStore(SqlStore):
    def __init__(self, url: str):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _configure(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN
            cursor = dbapi_connection.cursor()
            # 16 KiB pages for a new database: a megabyte-sized payload is a quarter of the pages to
            # write and read back as with the 4 KiB default, and commits of such payloads take about
            # half the time (measured); SQLite ignores this for an existing database
            cursor.execute("PRAGMA page_size=16384")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # builds that default to secure_delete=ON (Debian's) zero every freed page: dropping
            # a folded payload then wrote its megabytes again, fsync'd. FAST scrubs what lies in
            # b-tree pages and leaves freed overflow pages to be reused by the next payloads
            cursor.execute("PRAGMA secure_delete=FAST")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn):
            conn.exec_driver_sql(
                "BEGIN IMMEDIATE" if conn.get_execution_options().get("hub_write") else "BEGIN"
            )

        self._writers = WriterQueue()
        super().__init__(engine)

    def _writer_turn(self):
        return self._writers.turn()

    def _insert_ignore(self, conn, table, values) -> bool:
        statement = sqlite.insert(table).values(**values).on_conflict_do_nothing()
        return conn.execute(statement.returning(*table.primary_key.columns)).first() is not None


class PostgresStore(SqlStore):
    def __init__(self, url: str):
        super().__init__(sa.create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True))

    def _insert_ignore(self, conn, table, values) -> bool:
        # RETURNING, not rowcount: with implicit RETURNING the driver's rowcount is not the rows inserted
        statement = postgresql.insert(table).values(**values).on_conflict_do_nothing()
        return conn.execute(statement.returning(*table.primary_key.columns)).first() is not None

    def _lock_key(self, conn, key: str) -> None:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})

    def _snapshot_options(self) -> dict:
        # READ COMMITTED gives each statement its own snapshot; a close reads partials and the
        # payloads they do not hold in several statements, which must agree
        return {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}


def open_store(url: str) -> Store:
    """sqlite:///path (WAL) or postgresql://user@host/db (psycopg 3)."""
    if url.startswith("sqlite"):
        return SqliteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("postgresql"):
        return PostgresStore(url)
    raise RuvdllmError(f"hub database {url!r}: use sqlite:///PATH or postgresql://USER@HOST/DB")
