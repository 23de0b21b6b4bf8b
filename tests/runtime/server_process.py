"""A real `ruvdllm serve` process on a free loopback port, for the server tests and the server
benchmark: started as a subprocess with `--port 0`, ready when it prints `serving NAME on URL`,
terminated (then killed if it must be) on exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

READY = re.compile(r"^serving (\S+) on (http://\S+)/v1$")
SERVER_ERROR = re.compile(r'" 5\d\d ')  # uvicorn access log: ... "POST /v1/completions HTTP/1.1" 500 ...


@dataclass
class ServerProcess:
    name: str  # the served model id
    url: str  # http://127.0.0.1:PORT (no /v1)
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)  # everything it printed, stdout and stderr

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log(self) -> str:
        return "".join(self.output)

    def alive(self) -> bool:
        return self.process.poll() is None

    def server_errors(self) -> list[str]:
        """uvicorn's access-log lines of 5xx answers, and any traceback the server printed."""
        return [line for line in self.output if SERVER_ERROR.search(line) or "Traceback" in line]


def _drain(process: subprocess.Popen, output: list[str], ready: threading.Event) -> None:
    for line in process.stdout:  # keeps the pipe from filling while the server logs
        output.append(line)
        if READY.match(line.strip()):
            ready.set()
    ready.set()  # the process ended: stop waiting


@contextmanager
def serve(
    model_dir: Path, *args: str, cache_dir: Path | None = None, timeout: float = 120.0
) -> Iterator[ServerProcess]:
    """Run `ruvdllm serve --model model_dir --port 0 *args` until the block ends."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if cache_dir is not None:
        env["RUVDLLM_CACHE"] = str(cache_dir)
    options = "--port 0 --threads 1 --log-level info".split()
    command = [sys.executable, "-m", "ruvdllm.cli", "serve", "--model", str(model_dir), *options, *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output: list[str] = []
    ready = threading.Event()
    threading.Thread(target=_drain, args=(process, output, ready), daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after {timeout} s:\n{''.join(output)}")
        match = next((READY.match(line.strip()) for line in output if READY.match(line.strip())), None)
        if match is None:
            raise RuntimeError(f"server exited with {process.wait()}:\n{''.join(output)}")
        yield ServerProcess(match.group(1), match.group(2), process, output)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
