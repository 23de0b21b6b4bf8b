"""Filling a round without HTTP, for the load benchmark's big rounds (`hub_load.py --seed-direct`).

Sending 10,000 updates of ~1.8 MB over HTTP takes most of an hour on a small shared machine, and
what the big round measures is the close, not the ingest. So a pool of processes accepts the
updates the way a hub process does — each one a headless hub replica over the same database: the
body parsed and hashed by the HTTP handler's own function (routers/updates.py), the caller looked
up by its token's hash as the auth dependency does, `services.submission.submit` checking it
against the round and storing it in one transaction, and a folding thread (services/folding.py)
folding what that process accepted into its running sum and saving it as the process's partial.
Nothing is written by hand: the stored contributions, partials and rows are what replicas that
had received the same requests over HTTP would leave. What is skipped is the request itself
(HTTP framing, the event loop), which the HTTP rows of the benchmark measure. Each client's token is
issued the same way, in the worker (POST /v1/admin/tokens does nothing more than that store call;
10,000 of them over HTTP took longer than the round on a loaded machine).

Each worker folds only what it accepted (no adoption of other workers' contributions, as
`fold_adopt_s` would allow a hub after 120 s) and saves everything before it returns.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from federation_hub.auth import Caller, new_token, token_hash
from federation_hub.observability import HubMetrics
from federation_hub.routers.updates import _parse_and_hash
from federation_hub.services import submission
from federation_hub.services.folding import Folder
from federation_hub.services.state import HubState
from federation_hub.settings import HubSettings
from federation_hub.storage import open_store

PROGRESS = 250  # a line on stderr every this many accepted updates, per worker
NEVER = 1e8  # seconds (3 years): a worker never adopts another worker's contributions
ID = "XXXXXX-00000000"  # "{tag}-{client}", fixed width: replacing it keeps a safetensors header's length


def client_body(bodies: list[bytes], tag: str, i: int) -> bytes:
    """Client i's update: one of the template bodies, under an update id of its own."""
    return bodies[i % len(bodies)].replace(ID.encode(), f"{tag:-<6.6}-{i:08d}".encode())


def seed(
    database_url: str,
    tenant: str,
    clients: int,
    bodies: list[bytes],
    content_type: str,
    tag: str,
    workers: int,
) -> dict:
    """`clients` clients of `tenant` (named `{tag}-{i}`) each get a token and submit their body
    (`client_body`), through `workers` processes; returns the wall time, the workers' CPU seconds
    and their largest peak RSS."""
    started = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(
                _seed_share, database_url, tenant, range(w, clients, workers), bodies, content_type, tag
            )
            for w in range(workers)
        ]
        done = [f.result() for f in futures]
    return {
        "seeded": sum(d["accepted"] for d in done),
        "seed_wall_s": time.perf_counter() - started,
        "seed_cpu_s": sum(d["cpu_s"] for d in done),
        "seed_peak_rss_mib": max(d["peak_rss_mib"] for d in done),
    }


def _seed_share(
    database_url: str, tenant: str, share: range, bodies: list[bytes], content_type: str, tag: str
) -> dict:
    store = open_store(database_url)
    settings = HubSettings(database_url=database_url, admin_token_hash="-", fold_adopt_s=NEVER)
    state = HubState(settings, store, store.hub_id(), HubMetrics(), np.random.default_rng())
    folder = state.folder = Folder(state)
    stop = threading.Event()

    def fold() -> None:  # the hub's folding loop (Folder.run), on a thread of this process
        while not stop.is_set():
            folder.step()
            stop.wait(settings.fold_interval_s)

    cpu, started = time.process_time(), time.perf_counter()
    folding = threading.Thread(target=fold, daemon=True)
    folding.start()
    accepted = 0
    try:
        for i in share:
            # the token as POST /v1/admin/tokens issues it, the caller as the auth dependency finds it
            token = new_token()
            store.create_token(token_hash(token), tenant, f"{tag}-{i}", ())
            record = store.token_by_hash(token_hash(token))
            caller = Caller("client", tenant=record.tenant, client_id=record.client_id, groups=record.groups)
            update, body_hash = _parse_and_hash(client_body(bodies, tag, i), content_type)
            _, duplicate = submission.submit(state, caller, update, body_hash)
            accepted += not duplicate
            if accepted % PROGRESS == 0:
                seconds = time.perf_counter() - started
                print(
                    f"seeding {tag}: a worker accepted {accepted} in {seconds:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        stop.set()
        folding.join()
    folder.flush()
    store.close()
    return {
        "accepted": accepted,
        "cpu_s": time.process_time() - cpu,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
