"""Schema-driven fuzzing (schemathesis, from the server's own OpenAPI schema) of `ruvdllm serve`
on a real uvicorn process: hundreds of generated requests — wrong types, missing fields, odd
values, odd headers — and not one 500; the server still answers afterwards."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from tests.runtime.server_process import serve


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    with serve(tiny_model_dir, cache_dir=tmp_path_factory.mktemp("cache")) as process:
        yield process


def test_fuzzing_finds_no_server_error(server, tmp_path):
    options = (
        "--checks not_a_server_error --phases coverage,fuzzing -n 20 --seed 20250101"
        " --generation-database none --no-color -w 1 --request-timeout 60"
    ).split()
    command = [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json", *options]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=540)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) > 300, run.stdout[-2000:]
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert server.server_errors() == []
