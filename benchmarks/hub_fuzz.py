"""Schema-driven fuzzing of the federation hub: schemathesis generates requests from the OpenAPI
schema (every phase, stateful included) against a real hub process, as admin and as client, plus
the safetensors update body alone (bodies from tests/federation_hub/fuzz_hooks.py), and counts
server errors. The suite runs a bounded version (tests/federation_hub/test_fuzz.py).

    python benchmarks/hub_fuzz.py --max-examples 50
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.federation_hub.hubs import SMALL_SHAPES, HubProcess  # noqa: E402
from tests.federation_hub.test_fuzz import HOOKS  # noqa: E402

SAFETENSORS_ONLY = "--include-path /v1/updates --include-method POST --mode positive".split()

FUZZ_OPTIONS = "--checks not_a_server_error --generation-database none --no-color -w 1 --request-timeout 120"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=50, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hub-fuzz-") as workdir:
        hub = HubProcess(Path(workdir), extra_args=["--max-request-mb", "4"]).start()
        try:
            admin = hub.admin()
            admin.create_tenant("fuzz")
            client = admin.create_token("fuzz", "fuzzer", ["g"])["token"]
            admin.open_round(tier="tenant", tenant="fuzz", timestep_group="coarse", shapes=SMALL_SHAPES)
            admin.open_round(tier="public", timestep_group="coarse", shapes=SMALL_SHAPES)
            admin.open_round(
                tier="group", tenant="fuzz", group="g", timestep_group="fine", shapes=SMALL_SHAPES
            )
            totals = {}
            runs = [
                ("admin", hub.admin_token, []),
                ("client", client, []),
                ("safetensors", client, SAFETENSORS_ONLY),
            ]
            for role, token, only in runs:
                started = time.perf_counter()
                header = ["-H", f"Authorization: Bearer {token}"]
                options = [*f"-n {args.max_examples} --seed {args.seed} {FUZZ_OPTIONS}".split(), *only]
                run = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "schemathesis.cli",
                        "run",
                        hub.url + "/openapi.json",
                        *header,
                        *options,
                    ],
                    capture_output=True,
                    text=True,
                    cwd=workdir,
                    env={**os.environ, **HOOKS},
                )
                counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
                totals[role] = {
                    "exit": run.returncode,
                    "generated": int(counts.group(1)) if counts else None,
                    "passed": int(counts.group(2)) if counts else None,
                    "seconds": round(time.perf_counter() - started, 1),
                }
                if run.returncode != 0:
                    print(run.stdout[-5000:])
            statuses = [
                json.loads(line).get("status")
                for line in hub.log.read_text().splitlines()
                if '"request"' in line
            ]
        finally:
            hub.stop()
    server_errors = sum(1 for s in statuses if s is not None and s >= 500)
    for role, numbers in totals.items():
        print(f"{role:7s} {numbers}")
    print(f"requests logged by the hub: {len(statuses)}, 5xx: {server_errors}")
    return 0 if server_errors == 0 and all(t["exit"] == 0 for t in totals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
