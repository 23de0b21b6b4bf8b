"""Three hub replicas sharing one PostgreSQL database (a real server the suite starts), reached
through the client's round-robin: one hub id and shared state; no overspent budget; every update
any replica acknowledged counted exactly once — in the contributions and in the released sum —
through a SIGKILL of one replica mid-round; and one close when two replicas are asked at once."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from federation_hub.aggregate.lora import LowRankSum
from federation_hub.client import HubAdmin, HubClient, HubRequestError
from federation_hub.storage import open_store
from federation_hub.tiers import Tier
from tests.federation_hub.hubs import SMALL_SHAPES, HubProcess, client_update, random_update

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(postgres_server, tmp_path):
    url = postgres_server.create_database()
    first = HubProcess(tmp_path / "r1", database_url=url, extra_args=["--k-anonymity", "2"])
    hubs = [first] + [
        HubProcess(
            tmp_path / f"r{i}",
            database_url=url,
            admin_token=first.admin_token,
            extra_args=["--k-anonymity", "2"],
        )
        for i in (2, 3)
    ]
    for hub in hubs:
        hub.launch()  # together: migrations must serialise
    for hub in hubs:
        hub.wait_ready()
    yield hubs
    for hub in hubs:
        hub.kill()


def everywhere(hubs) -> str:
    return ",".join(hub.url for hub in hubs)


def test_replicas_share_state_and_budgets(replicas):
    ids = {hub.admin().request("GET", "/health")["hub_id"] for hub in replicas}
    assert len(ids) == 1
    admin = HubAdmin(everywhere(replicas), replicas[0].admin_token, retries=0)
    admin.create_tenant("acme")
    token = admin.create_token("acme", "c0")["token"]
    for i in range(5):
        admin.open_round(tier="public", timestep_group=f"g{i}", shapes=SMALL_SHAPES, strategy="fedavg")

    # one client, five public rounds at σ = 8, through all replicas at once: exactly three fit in ε = 1
    outcomes = []

    def submit(i):
        hub = replicas[i % 3]
        try:
            hub.client(token).submit(
                client_update(f"u{i}", Tier.PUBLIC, {f"g{i}": random_update(np.random.default_rng(i))})
            )
            outcomes.append("ok")
        except HubRequestError as exc:
            outcomes.append(exc.status)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes, key=str) == sorted(["ok"] * 3 + [403] * 2, key=str)
    assert replicas[2].client(token).budget()["contributions"] == 3


def test_every_acknowledged_update_counts_once_through_a_sigkill(replicas):
    admin = HubAdmin(everywhere(replicas), replicas[0].admin_token, retries=0)
    admin.create_tenant("acme")
    clients = 130
    tokens = [admin.create_token("acme", f"c{i:03d}")["token"] for i in range(clients)]
    round_ = admin.open_round(
        tier="tenant",
        tenant="acme",
        timestep_group="coarse",
        shapes=SMALL_SHAPES,
        strategy="weighted",
        release_rank=0,
    )
    rng = np.random.default_rng(0)
    updates = [random_update(rng) for _ in range(clients)]
    samples = [int(s) for s in rng.integers(1, 100, clients)]
    acknowledged, lock = {}, threading.Lock()

    def submit(i):
        client = HubClient(everywhere(replicas), tokens[i], retries=8, timeout_s=30)
        update = client_update(f"u{i:03d}", Tier.TENANT, {"coarse": updates[i]}, samples=samples[i])
        receipt = client.submit(update)  # a retry after the kill lands on a live replica
        with lock:
            acknowledged[i] = receipt

    def batch(indices):
        with ThreadPoolExecutor(6) as pool:
            return [pool.submit(submit, i) for i in indices]

    for done in batch(range(100)):
        done.result()
    # every replica saves its running sum: once the burst has ended (a second of quiet) with 32
    # waiting, or after 30 s of quiet for one that got fewer of the ~33 each (services/folding.py)
    store = open_store(replicas[0].database_url)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with store.reading() as snapshot:
            saved = len(list(snapshot.partials(round_["id"])))
        if saved == 3:
            break
        time.sleep(0.5)
    store.close()
    assert saved == 3  # the one about to be killed too
    with ThreadPoolExecutor(6) as pool:
        running = [pool.submit(submit, i) for i in range(100, 120)]
        time.sleep(0.3)
        replicas[2].kill()  # SIGKILL mid-round: what it held in memory or had in flight is gone
        for done in running:
            done.result()
    for done in batch(range(120, clients)):
        done.result()
    assert sorted(acknowledged) == list(range(clients))

    # two replicas asked to close at the same moment: one close, one release
    closers = [HubAdmin(hub.url, hub.admin_token, retries=0) for hub in replicas[:2]]
    start, results = threading.Barrier(2), []

    def close(closer):
        start.wait()
        results.append(closer.close_round(round_["id"]))

    threads = [threading.Thread(target=close, args=(c,)) for c in closers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and len({r["release_id"] for r in results}) == 1
    closed = results[0]
    assert closed["status"] == "released" and closed["contributions"] == clients
    release = replicas[1].client(tokens[0]).release(closed["release_id"])
    assert release["contributors"] == clients and release["details"]["contributions_summed"] == clients
    assert [e["kind"] for e in closers[0].audit()].count("release") == 1

    # the released sum is each update exactly once, weighted by its samples
    pairs = replicas[0].client(tokens[1]).release_pairs(closed["release_id"])
    total = sum(samples)
    for name, shape in SMALL_SHAPES.items():
        expected = LowRankSum(shape["out_features"], shape["in_features"])
        for i in range(clients):
            expected.add(updates[i][name], samples[i] / total)
        np.testing.assert_allclose(pairs[name].product(), expected.dense(), atol=1e-5)
    replicas[2].start()  # the killed replica comes back to the finished round
    assert replicas[2].admin().round(round_["id"])["status"] == "released"
    assert closers[1].verify_audit()["intact"]
