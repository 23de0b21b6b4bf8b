"""Two hub replicas sharing one PostgreSQL database (a real server started by the suite): one
hub id, shared tokens and rounds, no overspent budget and one release when both close a round."""

import threading

import numpy as np
import pytest

from federation_hub.client import HubRequestError
from federation_hub.tiers import Tier
from tests.federation_hub.hubs import SMALL_SHAPES, HubProcess, client_update, random_update

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(postgres_server, tmp_path):
    url = postgres_server.create_database()
    first = HubProcess(tmp_path / "r1", database_url=url, extra_args=["--k-anonymity", "2"])
    second = HubProcess(
        tmp_path / "r2", database_url=url, admin_token=first.admin_token, extra_args=["--k-anonymity", "2"]
    )
    for hub in (first, second):
        hub.launch()  # together: migrations must serialise
    for hub in (first, second):
        hub.wait_ready()
    yield first, second
    for hub in (first, second):
        hub.kill()


def test_replicas_share_state(replicas):
    r1, r2 = replicas
    assert r1.admin().request("GET", "/health")["hub_id"] == r2.admin().request("GET", "/health")["hub_id"]
    admin1, admin2 = r1.admin(), r2.admin()
    admin1.create_tenant("acme")
    tokens = [admin2.create_token("acme", f"c{i}")["token"] for i in range(6)]
    rounds = [
        admin1.open_round(tier="public", timestep_group=f"g{i}", shapes=SMALL_SHAPES, strategy="fedavg")["id"]
        for i in range(5)
    ]
    rng = np.random.default_rng(0)

    # one client, five public rounds at σ = 8, through both replicas at once: exactly three fit in ε = 1
    outcomes = []

    def submit(i):
        hub = (r1, r2)[i % 2]
        try:
            hub.client(tokens[0]).submit(
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
    assert r2.client(tokens[0]).budget()["contributions"] == 3

    # contributions through either replica land in the same round; both close it, one release results
    target = rounds[0]
    for i, token in enumerate(tokens[1:]):
        hub = (r1, r2)[i % 2]
        hub.client(token).submit(client_update(f"w{i}", Tier.PUBLIC, {"g0": random_update(rng)}))
    results = []
    closers = [
        threading.Thread(target=lambda a=a: results.append(a.close_round(target))) for a in (admin1, admin2)
    ]
    for t in closers:
        t.start()
    for t in closers:
        t.join()
    assert len({r["release_id"] for r in results}) == 1 and results[0]["status"] == "released"
    release = r1.client(tokens[3]).release(results[0]["release_id"])
    assert release["contributors"] >= 5
    audit = admin2.audit()
    assert [e["kind"] for e in audit].count("release") == 1
    assert admin1.verify_audit()["intact"]
