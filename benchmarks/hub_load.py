"""Federation hub under load, in one run: simulated clients submit rank-8 LoRA updates for 30
layers (SmolLM2-135M's q_proj 576→576 and v_proj 576→192) to real hub processes.

    disk         the machine's own fsync'd sequential write rate (2 MiB writes, fsync each: one
                 commit's worth), in the directory the hub writes to — the ceiling for ingest
    one hub      SQLite (WAL, synchronous=FULL): the same updates as JSON + base64, as safetensors
                 float32 and as safetensors float16 — submissions/s, p50/p99, the hub's CPU per
                 submission, MiB/s ingested; then each round is closed: seconds, hub CPU, peak RSS
    big round    one round of --big-clients (10,000) safetensors updates, closed: seconds, peak RSS
    replicas     three hub processes on one PostgreSQL server (fsync on), clients round-robin over
                 them, one replica SIGKILLed halfway; lost and double-counted updates, closes
    --seed-direct  instead of the above: rounds of --seed-clients (1,000 and 10,000) filled through
                 the hub's service layer by worker processes (hub_seed.py) — SEEDED, NOT SENT OVER
                 HTTP — then closed over HTTP by a hub process: close wall, hub CPU, peak RSS

Wall-clock figures depend on what else the machine runs; the hub's CPU time (all its threads,
folding included) stays comparable, and the ratios come from the same run.

    python benchmarks/hub_load.py                                   # the full run (~GBs of updates)
    python benchmarks/hub_load.py --clients 100 --big-clients 300 --layers 4     # a quick look
    python benchmarks/hub_load.py --seed-direct                     # the 1,000 and 10,000 closes
"""

from __future__ import annotations

import argparse
import json
import os
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

from benchmarks.hub_seed import ID, client_body, seed  # noqa: E402
from federation_hub import codec  # noqa: E402
from federation_hub.client import HubAdmin, HubClient, shapes_spec  # noqa: E402
from federation_hub.tiers import Tier  # noqa: E402
from tests.federation_hub.hubs import HubProcess, client_update, random_update  # noqa: E402
from tests.federation_hub.postgres import PostgresServer  # noqa: E402

STARTUP_S = 600  # a hub process on a loaded machine may take minutes to import and start
TEMPLATES = 16  # distinct random updates, reused across clients (the hub cannot tell, nor needs to)
KINDS = {  # body kind: (content type, float16)
    "json": ("application/json", False),
    "binary-f32": (codec.MEDIA_TYPE, False),
    "binary-f16": (codec.MEDIA_TYPE, True),
}


DISK_PROBES = 3


def fsync_write_rate(directory: Path, total_mib: int = 256, chunk_mib: int = 2) -> float:
    """MiB/s of sequential writes of `chunk_mib`, each followed by fsync."""
    chunk = os.urandom(chunk_mib * 2**20)
    path = directory / "fsync-probe"
    started = time.perf_counter()
    with open(path, "wb") as file:
        for _ in range(total_mib // chunk_mib):
            file.write(chunk)
            file.flush()
            os.fsync(file.fileno())
    elapsed = time.perf_counter() - started
    path.unlink()
    return total_mib / elapsed


def templates(shapes: dict, kind: str, rng: np.random.Generator, group: str | None = None) -> list[bytes]:
    """Bodies of `kind` for the round of timestep group `group` (default: named after the kind)."""
    group = group or kind
    encoder = HubClient("http://unused", "unused")
    content_type, half = KINDS[kind]
    binary = content_type == codec.MEDIA_TYPE
    bodies = []
    for _ in range(TEMPLATES):
        update = client_update(ID, Tier.TENANT, {group: random_update(rng, shapes, scale=0.05)})
        bodies.append(encoder.encode(update, binary=binary, float16={group} if half else ()))
    return bodies


class Peak:
    """Peak resident memory of some processes, sampled every 20 ms while running."""

    def __init__(self, pids: list[int]):
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for process in self.processes:
                try:
                    self.peak = max(self.peak, process.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.02)


def folded(urls: list[str]) -> float:
    """Contributions the hubs have folded into running sums so far (their metric)."""
    total = 0.0
    for url in urls:
        try:
            text = httpx.get(url + "/metrics", timeout=30).text
        except httpx.HTTPError:
            continue  # a replica that was killed
        total += sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("hub_contributions_folded_total")
        )
    return total


def cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def submit_all(urls, tokens, bodies, content_type, concurrency, tag: str, on_progress=None) -> dict:
    """Each token sends one body, round-robin over `urls`; a connection error (a replica that
    died) sends the same bytes to the next one. Returns latencies (of acknowledged requests), wall
    time, the acknowledged clients and the retries."""
    latencies, acknowledged, lock, turn = [], set(), threading.Lock(), iter(range(10**9))
    retries = [0]
    local = threading.local()

    def send(i: int) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=600)
        body = client_body(bodies, tag, i)
        headers = {"authorization": f"Bearer {tokens[i]}", "content-type": content_type}
        for attempt in range(2 * len(urls) + 2):
            url = urls[next(turn) % len(urls)]
            started = time.perf_counter()
            try:
                response = local.http.post(url + "/v1/updates", content=body, headers=headers)
            except httpx.TransportError:
                with lock:
                    retries[0] += 1
                time.sleep(0.05 * attempt)
                continue
            if response.status_code not in (200, 201):
                raise RuntimeError(f"client {i}: {response.status_code} {response.text[:300]}")
            with lock:
                latencies.append(time.perf_counter() - started)
                acknowledged.add(i)
                done = len(acknowledged)
            if on_progress:
                on_progress(done)
            return
        raise RuntimeError(f"client {i}: no replica answered")

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(len(tokens))))
    return {
        "latencies": latencies,
        "wall": time.perf_counter() - started,
        "acked": acknowledged,
        "retries": retries[0],
    }


def issue_tokens(admin: HubAdmin, tenant: str, count: int, start: int = 0) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        return list(
            pool.map(lambda i: admin.create_token(tenant, f"c{i}")["token"], range(start, start + count))
        )


def open_round(admin: HubAdmin, tenant: str, group: str, shapes: dict, half: bool) -> dict:
    return admin.open_round(
        tier="tenant",
        tenant=tenant,
        timestep_group=group,
        shapes=shapes,
        strategy="weighted",
        accept_float16=half,
    )


def close(admin: HubAdmin, round_id: int, pids: list[int]) -> dict:
    before = cpu(pids)
    with Peak(pids) as peak:
        started = time.perf_counter()
        closed = admin.close_round(round_id)
        seconds = time.perf_counter() - started
    assert closed["status"] == "released", closed
    return {"close_s": seconds, "close_cpu_s": cpu(pids) - before, "close_peak_rss_mib": peak.peak / 2**20}


def load_row(run: dict, body_mib: float, cpu_s: float, clients: int) -> dict:
    lat = np.array(run["latencies"]) * 1000
    return {
        "submissions_per_s": clients / run["wall"],
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "hub_cpu_ms_per_submission": cpu_s / clients * 1000,
        "ingest_mib_per_s": clients * body_mib / run["wall"],
    }


def one_hub(args, shapes, workdir: Path, rng) -> dict:
    hub = HubProcess(workdir / "hub", extra_args=["--max-request-mb", "32", "--log-level", "warning"])
    hub.start(timeout=STARTUP_S)
    results = {}
    try:
        admin = HubAdmin(hub.url, hub.admin_token, retries=0, timeout_s=3600)
        admin.create_tenant("load")
        tokens = issue_tokens(admin, "load", max(args.clients, args.big_clients))
        pids = [hub.proc.pid]
        for kind in args.kinds:
            content_type, half = KINDS[kind]
            bodies = templates(shapes, kind, rng)
            round_ = open_round(admin, "load", kind, shapes, half)
            before, folded_before = cpu(pids), folded([hub.url])
            run = submit_all(
                [hub.url], tokens[: args.clients], bodies, content_type, args.concurrency, kind[-3:]
            )
            row = load_row(run, len(bodies[0]) / 2**20, cpu(pids) - before, args.clients)
            row["request_mib"] = len(bodies[0]) / 2**20
            row["unfolded_at_close"] = args.clients - (folded([hub.url]) - folded_before)
            row.update(close(admin, round_["id"], pids))
            results[kind] = row
            print(kind, json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
        if args.big_clients:
            bodies = templates(shapes, "binary-f32", rng, group="big")
            round_ = open_round(admin, "load", "big", shapes, False)
            folded_before = folded([hub.url])
            run = submit_all(
                [hub.url], tokens[: args.big_clients], bodies, codec.MEDIA_TYPE, args.concurrency, "big"
            )
            row = {"clients": args.big_clients, "submissions_per_s": args.big_clients / run["wall"]}
            row["unfolded_at_close"] = args.big_clients - (folded([hub.url]) - folded_before)
            row.update(close(admin, round_["id"], pids))
            results["big"] = row
            print("big", json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
    finally:
        hub.stop()
    return results


def replicas(args, shapes, workdir: Path, rng) -> dict:
    server = PostgresServer(fsync=True).start()
    hubs = []
    try:
        url = server.create_database()
        first = HubProcess(
            workdir / "r1", database_url=url, extra_args=["--max-request-mb", "32", "--log-level", "warning"]
        )
        hubs = [first] + [
            HubProcess(
                workdir / f"r{i}",
                database_url=url,
                admin_token=first.admin_token,
                extra_args=first.extra_args,
            )
            for i in (2, 3)
        ]
        for hub in hubs:
            hub.launch()
        for hub in hubs:
            hub.wait_ready(STARTUP_S)
        everywhere = ",".join(h.url for h in hubs)
        admin = HubAdmin(everywhere, first.admin_token, retries=3, timeout_s=3600)
        admin.create_tenant("load")
        tokens = issue_tokens(admin, "load", args.clients)
        bodies = templates(shapes, "binary-f32", rng, group="replicas")
        round_ = open_round(admin, "load", "replicas", shapes, False)
        pids = [h.proc.pid for h in hubs]
        killed = threading.Event()

        def kill_halfway(done: int) -> None:
            if done >= args.clients // 2 and not killed.is_set():
                killed.set()
                hubs[2].kill()

        before = cpu(pids)
        run = submit_all(
            [h.url for h in hubs], tokens, bodies, codec.MEDIA_TYPE, args.concurrency, "repl", kill_halfway
        )
        row = load_row(run, len(bodies[0]) / 2**20, cpu(pids) - before, args.clients)
        row["unfolded_at_close"] = args.clients - folded(
            [h.url for h in hubs[:2]]
        )  # the killed one's are lost
        closers = [HubAdmin(h.url, h.admin_token, retries=0, timeout_s=3600) for h in hubs[:2]]
        gate, closed = threading.Barrier(2), []

        def close_one(closer):
            gate.wait()
            closed.append(closer.close_round(round_["id"]))

        started = time.perf_counter()
        threads = [threading.Thread(target=close_one, args=(c,)) for c in closers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        row["close_s"] = time.perf_counter() - started
        release = HubClient(hubs[0].url, tokens[0]).release(closed[0]["release_id"])
        summed = release["details"]["contributions_summed"]
        row.update(
            acknowledged=len(run["acked"]),
            stored=closed[0]["contributions"],
            lost=len(run["acked"]) - closed[0]["contributions"],
            double_counted=summed - len(run["acked"]),
            client_retries=run["retries"],
            release_ids=len({c["release_id"] for c in closed}),
            release_audit_entries=audit_count(closers[0], "release"),
        )
        print("replicas", json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
        return row
    finally:
        for hub in hubs:
            hub.kill()
        server.stop()


def seeded(args, shapes, workdir: Path, rng, store: str) -> list[dict]:
    """Rounds of --seed-clients updates filled through the service layer (hub_seed.py: not sent
    over HTTP), each then closed over HTTP by a hub process that did none of the folding: it
    merges the workers' saved partials and factorises. The hub is stopped while a round is
    seeded (it would start adopting the workers' contributions after fold_adopt_s) and started
    again for the close, so its CPU and peak RSS are the close's alone."""
    server = PostgresServer(fsync=True).start() if store == "postgresql" else None
    url = server.create_database() if server else None
    hub = HubProcess(
        workdir / f"seed-{store}",
        database_url=url,
        extra_args=["--max-request-mb", "32", "--log-level", "warning"],
    )
    rows = []
    try:
        hub.start(timeout=STARTUP_S)
        admin = HubAdmin(hub.url, hub.admin_token, retries=0, timeout_s=3600)
        admin.create_tenant("load")
        bodies = templates(shapes, "binary-f32", rng, group="seeded")
        for clients in args.seed_clients:
            round_ = open_round(admin, "load", "seeded", shapes, False)
            hub.stop()
            row = {"store": store, "clients": clients}
            row.update(
                seed(
                    hub.database_url,
                    "load",
                    clients,
                    bodies,
                    codec.MEDIA_TYPE,
                    f"s{clients}",
                    args.seed_workers,
                )
            )
            assert row["seeded"] == clients, row
            hub.start(timeout=STARTUP_S)
            row.update(close(admin, round_["id"], [hub.proc.pid]))
            again = admin.close_round(round_["id"])  # idempotent: the finished round
            release = HubClient(hub.url, admin.create_token("load", f"reader{clients}")["token"]).release(
                again["release_id"]
            )
            row["contributions_summed"] = release["details"]["contributions_summed"]
            rows.append(row)
            print(
                "seeded",
                json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
    finally:
        hub.stop()
        if server:
            server.stop()
    return rows


def audit_count(admin: HubAdmin, kind: str) -> int:
    count, after = 0, 0
    while entries := admin.audit(after=after):
        count += sum(e["kind"] == kind for e in entries)
        after = entries[-1]["seq"]
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--big-clients", type=int, default=10000, help="the big round (0: skip)")
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--skip-replicas", action="store_true")
    parser.add_argument(
        "--seed-direct",
        action="store_true",
        help="only the disk and rounds of --seed-clients filled through the service layer, not HTTP "
        "(hub_seed.py), closed over HTTP",
    )
    parser.add_argument("--seed-clients", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seed-workers", type=int, default=2, help="processes accepting the seeded updates")
    parser.add_argument("--seed-store", nargs="+", default=["sqlite"], choices=["sqlite", "postgresql"])
    args = parser.parse_args()

    shapes = shapes_spec(args.layers, {"q_proj": (576, 576), "v_proj": (576, 192)}, rank=args.rank)
    rng = np.random.default_rng(0)
    results = {"load_average": os.getloadavg(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="hub-load-") as workdir:
        # a virtual disk's fsync'd rate moves several-fold between probes minutes apart: the median of
        # three, each printed
        probes = [fsync_write_rate(Path(workdir)) for _ in range(DISK_PROBES)]
        results["fsync_write_probes"] = probes
        results["fsync_write_mib_per_s"] = float(np.median(probes))
        shown = ", ".join(f"{p:.0f}" for p in probes)
        print(
            f"disk: fsync'd sequential writes {results['fsync_write_mib_per_s']:.0f} MiB/s (median of {shown})",
            flush=True,
        )
        if args.seed_direct:
            results["seeded"] = [
                row for store in args.seed_store for row in seeded(args, shapes, Path(workdir), rng, store)
            ]
        else:
            results.update(one_hub(args, shapes, Path(workdir), rng))
        if not args.skip_replicas and not args.seed_direct:
            results["replicas"] = replicas(args, shapes, Path(workdir), rng)
    results["load_average_after"] = os.getloadavg()
    summary(results)
    print(json.dumps(results, default=lambda v: round(v, 3) if isinstance(v, float) else v))
    return 0


def summary(results: dict) -> None:
    disk = results["fsync_write_mib_per_s"]
    print(f"\nmachine: {results['cores']} cores, load average {results['load_average'][0]:.1f} at the start")
    if any(kind in results for kind in KINDS):
        print(
            f"{'body':12s} {'subs/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU ms':>8s} {'MiB/s':>8s} {'÷ disk':>7s} {'unfolded':>8s} {'close s':>8s} {'RSS MiB':>8s}"
        )
    for kind in KINDS:
        if kind in results:
            r = results[kind]
            print(
                f"{kind:12s} {r['submissions_per_s']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
                f"{r['hub_cpu_ms_per_submission']:8.1f} {r['ingest_mib_per_s']:8.1f} {r['ingest_mib_per_s'] / disk:7.2f} "
                f"{r['unfolded_at_close']:8.0f} {r['close_s']:8.2f} {r['close_peak_rss_mib']:8.0f}"
            )
    if "json" in results and "binary-f32" in results:
        ratio = results["binary-f32"]["submissions_per_s"] / results["json"]["submissions_per_s"]
        cpu_ratio = (
            results["json"]["hub_cpu_ms_per_submission"] / results["binary-f32"]["hub_cpu_ms_per_submission"]
        )
        print(f"binary-f32 ÷ json: {ratio:.1f}× submissions/s, {cpu_ratio:.1f}× less hub CPU per submission")
    if "big" in results:
        r = results["big"]
        print(
            f"big round: {r['clients']} clients closed in {r['close_s']:.2f} s, peak RSS {r['close_peak_rss_mib']:.0f} MiB"
        )
    if "seeded" in results:
        print("rounds filled through the service layer by worker processes (seeded, NOT sent over HTTP),")
        print("closed over HTTP by a hub process that folded none of them:")
        print(
            f"{'store':10s} {'clients':>8s} {'seed s':>8s} {'seed CPU ms':>11s} {'seed RSS':>8s} "
            f"{'close s':>8s} {'close CPU':>9s} {'RSS MiB':>8s} {'summed':>7s}"
        )
        for r in results["seeded"]:
            print(
                f"{r['store']:10s} {r['clients']:8d} {r['seed_wall_s']:8.1f} "
                f"{r['seed_cpu_s'] / r['clients'] * 1000:11.1f} {r['seed_peak_rss_mib']:8.0f} "
                f"{r['close_s']:8.2f} {r['close_cpu_s']:9.2f} {r['close_peak_rss_mib']:8.0f} "
                f"{r['contributions_summed']:7d}"
            )
    if "replicas" in results:
        r = results["replicas"]
        print(
            f"3 replicas (PostgreSQL, one SIGKILLed halfway): {r['submissions_per_s']:.1f} subs/s, "
            f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms; acknowledged {r['acknowledged']}, "
            f"lost {r['lost']}, double-counted {r['double_counted']}; {r['release_ids']} release from two "
            f"concurrent closes ({r['release_audit_entries']} in the audit log), close {r['close_s']:.2f} s"
        )


if __name__ == "__main__":
    sys.exit(main())
