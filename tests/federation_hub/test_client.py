"""The client library against a real hub: private updates never produce a request; group updates
are sealed end to end and aggregated by the members."""

import base64
import sqlite3

import numpy as np
import pytest

from federation_hub.aggregate.lora import LowRankSum
from federation_hub.client import HubClient, HubRequestError
from federation_hub.codec import decode_contribution
from federation_hub.privacy.sealing import generate_group_key
from federation_hub.tiers import Tier
from ruvdllm.errors import RuvdllmError
from tests.federation_hub.hubs import SMALL_SHAPES, client_update, free_port, random_update


@pytest.fixture(scope="module")
def org(hub):
    admin = hub.admin()
    admin.create_tenant("initech")
    tokens = {
        name: admin.create_token("initech", name, ["onc"] if name != "outsider" else [])
        for name in ("m1", "m2", "m3", "outsider")
    }
    return admin, tokens


def test_private_updates_never_leave_the_device(hub, org):
    admin, tokens = org
    admin.open_round(tier="tenant", tenant="initech", timestep_group="coarse", shapes=SMALL_SHAPES)
    sent = []
    client = hub.client(
        tokens["m1"]["token"], event_hooks={"request": [lambda request: sent.append(request)]}
    )
    private_pairs = random_update(np.random.default_rng(42))
    raw_marker = private_pairs["layers.0.q_proj"].a.astype("<f4").tobytes()[:48]
    marker = base64.b64encode(raw_marker)
    client.submit(client_update("shared-1", Tier.TENANT, {"coarse": random_update(np.random.default_rng(1))}))
    assert [r.method for r in sent] == ["GET", "POST"]  # does the round take float16? then the update
    with pytest.raises(RuvdllmError, match="never leaves this device"):
        client.submit(client_update("private-1", Tier.PRIVATE, {"coarse": private_pairs}))
    with pytest.raises(RuvdllmError, match="never leaves"):
        client.submit(client_update("private-2", "private", {"coarse": private_pairs}))
    assert len(sent) == 2  # the refusals made no request at all
    bodies = b"".join(r.content for r in sent)
    assert b"private-1" not in bodies and marker not in bodies and raw_marker not in bodies
    database = hub.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM updates WHERE update_id LIKE 'private%'").fetchone() == (0,)


def test_group_tier_is_sealed_relayed_and_aggregated_by_members(hub, org):
    admin, tokens = org
    key = generate_group_key()
    round_ = admin.open_round(
        tier="group",
        tenant="initech",
        group="onc",
        timestep_group="domain",
        shapes=SMALL_SHAPES,
        release_rank=0,
    )
    sent = []
    rng = np.random.default_rng(3)
    updates = {}
    ppl_after = {"m1": 18.0, "m2": 16.0, "m3": 21.0}  # m3 made things worse: DAF domain gives it nothing
    for name in ("m1", "m2", "m3"):
        client = hub.client(
            tokens[name]["token"], event_hooks={"request": [lambda request: sent.append(request)]}
        )
        updates[name] = random_update(rng)
        client.submit(
            client_update(
                f"{name}-g", Tier.GROUP, {"domain": updates[name]}, after=ppl_after[name], group="onc"
            ),
            group_key=key,
        )
    assert all(
        key.encode() not in r.content and key not in str(r.headers) for r in sent
    )  # the key never travels
    member = hub.client(tokens["m1"]["token"])
    with pytest.raises(HubRequestError) as info:
        member.request("GET", f"/v1/rounds/{round_['id']}/sealed")
    assert info.value.status == 409  # not relayed before the round closes
    closed = admin.close_round(round_["id"])
    assert closed["status"] == "relayed" and closed["release_id"] is None
    database = hub.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        stored = [
            bytes(p)
            for (p,) in db.execute("SELECT payload FROM contributions WHERE round_id = ?", (round_["id"],))
        ]
    assert len(stored) == 3  # ciphertext only: nothing the hub could read as a contribution
    for payload in stored:
        with pytest.raises(RuvdllmError):
            decode_contribution(payload)
    outsider = hub.client(tokens["outsider"]["token"])
    with pytest.raises(HubRequestError) as info:
        outsider.request("GET", f"/v1/rounds/{round_['id']}/sealed")
    assert info.value.status == 404
    result = member.aggregate_group_round(round_["id"], key, np.random.default_rng(0))
    assert result.selection.contributors == 2
    # softmax over relative improvement (temperature 0.05) of m1 and m2, computed independently
    improvement = np.array([(20 - 18) / 20, (20 - 16) / 20])
    w = np.exp(improvement / 0.05) / np.exp(improvement / 0.05).sum()
    for name, shape in SMALL_SHAPES.items():
        expected = LowRankSum(shape["out_features"], shape["in_features"])
        expected.add(updates["m1"][name], w[0])
        expected.add(updates["m2"][name], w[1])
        np.testing.assert_allclose(result.factors[name].pair.product(), expected.dense(), atol=1e-5)
    wrong_key = member.aggregate_group_round(round_["id"], generate_group_key(), np.random.default_rng(0))
    assert wrong_key.withheld  # nothing opens with another key


def test_round_robin_over_replicas_fails_over_to_a_live_one(hub, org):
    _, tokens = org
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sent = []
    client = HubClient(
        f"{dead},{hub.url}", tokens["m2"]["token"], retries=1, event_hooks={"request": [sent.append]}
    )
    for _ in range(3):
        assert client.me()["client_id"] == "m2"
    hosts = [f"{r.url.scheme}://{r.url.host}:{r.url.port}" for r in sent]
    assert hosts.count(dead) >= 1 and hosts.count(hub.url) == 3  # each call: the dead one at most once
    with pytest.raises(RuvdllmError, match="ConnectError"):
        HubClient(f"{dead},{dead}", tokens["m2"]["token"], retries=1).me()
