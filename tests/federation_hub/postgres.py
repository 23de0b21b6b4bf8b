"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl on loopback in a temp directory.

PostgreSQL refuses to run as root, so under root (CI) the server runs as the `postgres` user the
Debian packages create (via runuser). fsync is off unless asked for: this server holds test data
only (the load benchmark turns it on, to compare with SQLite's synchronous=FULL).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.federation_hub.hubs import free_port


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self, fsync: bool = False):
        self.fsync = fsync
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="ruvdllm-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user)

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stdout}\n{result.stderr}")

    def start(self) -> PostgresServer:
        initdb = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "hub",
            "-E",
            "UTF8",
            "--no-sync",
        ]
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync={'on' if self.fsync else 'off'}"
            " -c max_connections=200"
        )
        pg_ctl = [
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        ]
        try:
            self._run(*initdb)
            self._run(*pg_ctl)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "hub_" + uuid.uuid4().hex[:10]
        with psycopg.connect(f"postgresql://hub@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://hub@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
