"""Real hub processes on loopback for the tests (and benchmarks): `ruvdllm hub` in a subprocess
on a free port, with its own database, admin token and log file."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from federation_hub.aggregate.lora import LoraPair
from federation_hub.client import ClientUpdate, GroupContribution, HubAdmin, HubClient, shapes_spec
from federation_hub.tiers import Tier

REPO = Path(__file__).resolve().parents[2]
SMALL_SHAPES = shapes_spec(2, {"q_proj": (16, 16), "v_proj": (16, 8)}, rank=4)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class HubProcess:
    workdir: Path
    database_url: str | None = None
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    admin_token: str = field(default_factory=lambda: "admin-" + secrets.token_hex(16))
    proc: subprocess.Popen | None = None

    def __post_init__(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database_url = self.database_url or f"sqlite:///{self.workdir / 'hub.db'}"
        (self.workdir / "admin-token").write_text(self.admin_token)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "hub.log"

    def start(self, timeout: float = 60.0) -> HubProcess:
        return self.launch().wait_ready(timeout)

    def launch(self) -> HubProcess:
        """Start the process without waiting (start several, then `wait_ready` each)."""
        command = [
            sys.executable, "-m", "ruvdllm.cli", "hub", "--db", self.database_url, "--port", str(self.port),
            "--admin-token-file", str(self.workdir / "admin-token"), *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        return self

    def wait_ready(self, timeout: float = 60.0) -> HubProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"hub did not come up in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing — what a crash or the OOM killer does."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def admin(self) -> HubAdmin:
        return HubAdmin(self.url, self.admin_token, retries=0)

    def client(self, token: str, **kwargs) -> HubClient:
        return HubClient(self.url, token, **{"retries": 0, **kwargs})


def random_update(
    rng: np.random.Generator, shapes: dict = SMALL_SHAPES, scale: float = 0.1
) -> dict[str, LoraPair]:
    return {
        name: LoraPair(
            a=(rng.standard_normal((s["rank"], s["in_features"])) * scale).astype(np.float32),
            b=(rng.standard_normal((s["out_features"], s["rank"])) * scale).astype(np.float32),
        )
        for name, s in shapes.items()
    }


def client_update(
    update_id: str,
    tier: Tier,
    groups: dict[str, dict[str, LoraPair]],
    samples=10,
    before=20.0,
    after=18.0,
    group=None,
):
    parts = {tg: GroupContribution(pairs, before, after, samples) for tg, pairs in groups.items()}
    return ClientUpdate(update_id, tier, parts, consent=True, group=group)
