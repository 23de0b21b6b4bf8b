"""SIGKILL during a round: no acknowledged update is lost, no update is half stored, and a round
killed while closing is finished by the restarted hub."""

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from federation_hub import codec
from federation_hub.client import shapes_spec
from federation_hub.tiers import Tier
from tests.federation_hub.hubs import HubProcess, client_update, random_update

SHAPES = shapes_spec(2, {"q_proj": (64, 64)}, rank=4)
HEAVY = shapes_spec(4, {"q_proj": (192, 192), "v_proj": (192, 192)}, rank=8)


def db_rows(hub, query, *args):
    with sqlite3.connect(
        f"file:{hub.database_url.removeprefix('sqlite:///')}?mode=ro", uri=True, timeout=30
    ) as db:
        return db.execute(query, args).fetchall()


def test_sigkill_while_submitting_loses_no_acknowledged_update(tmp_path):
    hub = HubProcess(tmp_path / "hub").start()
    try:
        admin = hub.admin()
        admin.create_tenant("acme")
        tokens = [admin.create_token("acme", f"c{i}")["token"] for i in range(48)]
        rounds = {
            tg: admin.open_round(tier="tenant", tenant="acme", timestep_group=tg, shapes=SHAPES)["id"]
            for tg in ("coarse", "domain")
        }
        rng = np.random.default_rng(0)
        bodies = {}
        for i, token in enumerate(tokens):
            client = hub.client(token)
            update = client_update(
                f"u{i}",
                Tier.TENANT,
                {"coarse": random_update(rng, SHAPES), "domain": random_update(rng, SHAPES)},
            )
            bodies[i] = (client, client.encode(update))  # fixed bytes: a retry must be a replay
        acknowledged, lock = set(), threading.Lock()

        def submit(i):
            client, body = bodies[i]
            try:
                client.request("POST", "/v1/updates", content=body, content_type=codec.MEDIA_TYPE)
            except Exception:
                return
            with lock:
                acknowledged.add(i)

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(submit, i) for i in range(len(tokens))]
            deadline = time.monotonic() + 120
            while len(acknowledged) < 12 and time.monotonic() < deadline:
                time.sleep(0.005)
            hub.kill()
            for f in futures:
                f.result()
        assert 12 <= len(acknowledged) < len(tokens)
        hub.start()
        stored = {
            tg: {
                uid for (uid,) in db_rows(hub, "SELECT update_id FROM contributions WHERE round_id = ?", rid)
            }
            for tg, rid in rounds.items()
        }
        assert {f"u{i}" for i in acknowledged} <= stored["coarse"]
        assert stored["coarse"] == stored["domain"]  # an update is in all its rounds or in none
        # clients that got no answer retry with the same bytes: a replay or a first acceptance
        for i in set(range(len(tokens))) - acknowledged:
            client, body = bodies[i]
            receipt = client.request("POST", "/v1/updates", content=body, content_type=codec.MEDIA_TYPE)
            assert receipt["duplicate"] == (f"u{i}" in stored["coarse"])
        closed = admin.close_round(rounds["coarse"])
        assert closed["status"] == "released" and closed["contributions"] == len(tokens)
        assert admin.verify_audit()["intact"]
    finally:
        hub.kill()


def test_sigkill_while_closing_is_finished_on_restart(tmp_path):
    hub = HubProcess(tmp_path / "hub").start()
    try:
        admin = hub.admin()
        admin.create_tenant("acme")
        round_id = admin.open_round(
            tier="tenant",
            tenant="acme",
            timestep_group="fine",
            shapes=HEAVY,
            strategy="hybrid",
            release_rank=0,
        )["id"]
        rng = np.random.default_rng(1)
        base = random_update(rng, HEAVY)
        for i in range(24):  # one agreeing direction plus noise: the hybrid cluster takes them all
            noisy = {
                n: type(p)(a=p.a + 0.01 * rng.standard_normal(p.a.shape).astype(np.float32), b=p.b)
                for n, p in base.items()
            }
            hub.client(admin.create_token("acme", f"c{i}")["token"]).submit(
                client_update(f"u{i}", Tier.TENANT, {"fine": noisy}, samples=1 + i)
            )
        closer = threading.Thread(target=lambda: _ignore(lambda: admin.close_round(round_id)))
        closer.start()
        deadline = time.monotonic() + 30
        while (
            db_rows(hub, "SELECT status FROM rounds WHERE id = ?", round_id)[0][0] == "open"
            and time.monotonic() < deadline
        ):
            time.sleep(0.002)
        hub.kill()
        closer.join()
        state_at_kill = db_rows(hub, "SELECT status FROM rounds WHERE id = ?", round_id)[0][0]
        assert state_at_kill in ("closing", "released")
        hub.start()  # finishes a round it finds half-closed
        deadline = time.monotonic() + 60
        while admin.round(round_id)["status"] == "closing" and time.monotonic() < deadline:
            time.sleep(0.1)
        finished = admin.round(round_id)
        assert finished["status"] == "released"
        release = hub.client(admin.create_token("acme", "reader")["token"]).release(finished["release_id"])
        assert release["contributors"] == 24
        assert [e["kind"] for e in admin.audit()].count("release") == 1
        if state_at_kill == "closing":
            assert "resuming close" in hub.log.read_text()
    finally:
        hub.kill()


def _ignore(call):
    try:
        call()
    except Exception:
        pass
