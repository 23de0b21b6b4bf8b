"""Schema-driven fuzzing (schemathesis) of the OpenAPI schema against a real hub: no request, as
admin or as client, gets a 500. Bounded here; `benchmarks/hub_fuzz.py` runs longer campaigns."""

import json
import re
import subprocess
import sys

import pytest

from tests.federation_hub.hubs import SMALL_SHAPES


@pytest.fixture(scope="module")
def seeded(hub):
    admin = hub.admin()
    admin.create_tenant("fuzz")
    token = admin.create_token("fuzz", "fuzzer", ["g"])["token"]
    admin.open_round(tier="tenant", tenant="fuzz", timestep_group="coarse", shapes=SMALL_SHAPES)
    admin.open_round(tier="group", tenant="fuzz", group="g", timestep_group="fine", shapes=SMALL_SHAPES)
    return {"admin": hub.admin_token, "client": token}


@pytest.mark.parametrize("role", ["admin", "client"])
def test_fuzzing_finds_no_server_error(hub, seeded, role, tmp_path):
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", hub.url + "/openapi.json",
        "-H", f"Authorization: Bearer {seeded[role]}", "--checks", "not_a_server_error",
        "--phases", "coverage,fuzzing", "-n", "5", "--seed", "20250101", "--generation-database", "none",
        "--no-color", "-w", "1", "--request-timeout", "60",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=540)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) > 100, run.stdout[-2000:]
    statuses = [
        json.loads(line).get("status") for line in hub.log.read_text().splitlines() if '"request"' in line
    ]
    assert len(statuses) > 100 and 500 not in statuses
