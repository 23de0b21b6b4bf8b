"""Federation hub under load: simulated clients submit rank-8 LoRA updates for 30 layers
(SmolLM2-135M's q_proj 576→576 and v_proj 576→192) to one round of a real hub process, then the
round is closed and aggregated.

Prints submission throughput and latency (p50 / p99) against the hub's HTTP floor (GET /health
in the same run), and aggregation time for the round — plus, in process on the same data, the
hub's exact LowRankSum against the naive per-client `acc += w · (B @ A)` it replaces. Beside the
wall-clock figures it prints the hub process's CPU time (per submission, for the close), which
stays comparable when the machine is shared.

    python benchmarks/hub_load.py                       # 1,000 clients (about 1.8 GB of updates)
    python benchmarks/hub_load.py --clients 100 --layers 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from federation_hub.aggregate.lora import LowRankSum  # noqa: E402
from federation_hub.client import HubClient, shapes_spec  # noqa: E402
from federation_hub.tiers import Tier  # noqa: E402
from tests.federation_hub.hubs import HubProcess, client_update, random_update  # noqa: E402

TEMPLATES = 16  # distinct random updates, reused across clients (the hub cannot tell, nor needs to)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def build_templates(shapes: dict, rng: np.random.Generator) -> list[tuple[bytes, dict]]:
    encoder = HubClient("http://unused", "unused")
    templates = []
    for _ in range(TEMPLATES):
        pairs = random_update(rng, shapes, scale=0.05)
        body = encoder.encode(client_update("UPDATE-ID-PLACEHOLDER", Tier.TENANT, {"coarse": pairs}))
        templates.append((body, pairs))
    encoder.close()
    return templates


def submit_all(hub: HubProcess, tokens: list[str], templates, concurrency: int) -> tuple[list[float], float]:
    latencies, lock = [], threading.Lock()
    local = threading.local()

    def send(i: int) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=hub.url, timeout=300)
        body = templates[i % TEMPLATES][0].replace(b"UPDATE-ID-PLACEHOLDER", f"client-{i:05d}".encode())
        started = time.perf_counter()
        response = local.http.post(
            "/v1/updates",
            content=body,
            headers={"authorization": f"Bearer {tokens[i]}", "content-type": "application/json"},
        )
        elapsed = time.perf_counter() - started
        if response.status_code != 201:
            raise RuntimeError(f"client {i}: {response.status_code} {response.text[:200]}")
        with lock:
            latencies.append(elapsed)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(len(tokens))))
    return latencies, time.perf_counter() - started


def health_floor(hub: HubProcess, n: int = 200) -> list[float]:
    times = []
    with httpx.Client(base_url=hub.url) as http:
        for _ in range(n):
            started = time.perf_counter()
            http.get("/health")
            times.append(time.perf_counter() - started)
    return times


def in_process_aggregation(templates, shapes: dict, clients: int) -> tuple[float, float]:
    """CPU seconds for `clients` updates: the hub's LowRankSum vs naive per-client dense products."""
    weights = np.full(clients, 1.0 / clients)
    started = time.process_time()  # CPU time: comparable on a shared machine
    for name, s in shapes.items():
        total = LowRankSum(s["out_features"], s["in_features"])
        for i in range(clients):
            total.add(templates[i % TEMPLATES][1][name], weights[i])
        total.dense()
    ours = time.process_time() - started
    started = time.process_time()
    for name, s in shapes.items():
        acc = np.zeros((s["out_features"], s["in_features"]))
        for i in range(clients):
            pair = templates[i % TEMPLATES][1][name]
            acc += weights[i] * (pair.b.astype(np.float64) @ pair.a.astype(np.float64))
    naive = time.process_time() - started
    return ours, naive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--strategy", default="daf", help="the round's strategy (daf coarse = sample-weighted)"
    )
    parser.add_argument("--db", help="database URL (default: SQLite in a temp dir)")
    parser.add_argument(
        "--baseline-clients", type=int, default=100, help="clients in the in-process comparison"
    )
    args = parser.parse_args()

    shapes = shapes_spec(args.layers, {"q_proj": (576, 576), "v_proj": (576, 192)}, rank=args.rank)
    rng = np.random.default_rng(0)
    templates = build_templates(shapes, rng)
    body_mb = len(templates[0][0]) / 2**20
    print(f"update: {len(shapes)} linears, rank {args.rank}, {body_mb:.2f} MiB per request (JSON + base64)")

    with tempfile.TemporaryDirectory(prefix="hub-load-") as workdir:
        hub = HubProcess(
            Path(workdir),
            database_url=args.db,
            extra_args=["--max-request-mb", "32", "--log-level", "warning"],
        )
        hub.start()
        try:
            admin = hub.admin()
            admin.create_tenant("load")
            started = time.perf_counter()
            tokens = [admin.create_token("load", f"c{i}")["token"] for i in range(args.clients)]
            print(f"issued {args.clients} tokens in {time.perf_counter() - started:.1f} s")
            round_ = admin.open_round(
                tier="tenant", tenant="load", timestep_group="coarse", shapes=shapes, strategy=args.strategy
            )
            floor = health_floor(hub)
            process = psutil.Process(hub.proc.pid)
            cpu_before = sum(process.cpu_times()[:2])
            latencies, wall = submit_all(hub, tokens, templates, args.concurrency)
            cpu_submit = sum(process.cpu_times()[:2]) - cpu_before
            started = time.perf_counter()
            closed = HubClient(hub.url, hub.admin_token, timeout_s=3600).request(
                "POST", f"/v1/rounds/{round_['id']}/close", json={}
            )
            close_s = time.perf_counter() - started
            cpu_close = sum(process.cpu_times()[:2]) - cpu_before - cpu_submit
            assert closed["status"] == "released", closed
            metrics = httpx.get(hub.url + "/metrics").text
            server_agg = next(
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("hub_aggregation_seconds_sum")
            )
            db_bytes = sum(p.stat().st_size for p in Path(workdir).glob("hub.db*"))
        finally:
            hub.stop()

    ours, naive = in_process_aggregation(templates, shapes, args.baseline_clients)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    floor50 = percentile(floor, 50)
    result = {
        "clients": args.clients,
        "linears": len(shapes),
        "request_mib": round(body_mb, 2),
        "submissions_per_s": round(args.clients / wall, 1),
        "ingest_mib_per_s": round(args.clients * body_mb / wall, 1),
        "submit_p50_ms": round(p50 * 1000, 1),
        "submit_p99_ms": round(p99 * 1000, 1),
        "health_p50_ms": round(floor50 * 1000, 2),
        "submit_p50_over_health_p50": round(p50 / floor50, 1),
        "hub_cpu_ms_per_submission": round(cpu_submit / args.clients * 1000, 1),
        "close_round_s": round(close_s, 2),
        "hub_cpu_s_close": round(cpu_close, 2),
        "aggregation_s_server": round(server_agg, 2),
        "database_mib": round(db_bytes / 2**20),
        f"in_process_{args.baseline_clients}_clients_lowranksum_cpu_s": round(ours, 3),
        f"in_process_{args.baseline_clients}_clients_naive_cpu_s": round(naive, 3),
        "naive_over_lowranksum": round(naive / ours, 2),
    }
    for key, value in result.items():
        print(f"{key:42s} {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
