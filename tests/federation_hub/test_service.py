"""The hub as a real uvicorn process on loopback: auth and tenancy, validation, replays, size
limit, tenant-tier aggregation, differential-privacy budget, k-anonymity, audit, metrics."""

import base64
import json

import httpx
import numpy as np
import pytest

from federation_hub.aggregate.lora import LowRankSum
from federation_hub.client import HubRequestError
from federation_hub.tiers import Tier
from tests.federation_hub.hubs import SMALL_SHAPES, client_update, random_update


@pytest.fixture(scope="module")
def world(hub):
    """Two tenants; acme has alice and bob (alice in group rad), globex has eve (also in a group rad)."""
    admin = hub.admin()
    admin.create_tenant("acme")
    admin.create_tenant("globex")
    tokens = {
        "alice": admin.create_token("acme", "alice", ["rad"]),
        "bob": admin.create_token("acme", "bob"),
        "carol": admin.create_token("acme", "carol"),
        "eve": admin.create_token("globex", "eve", ["rad"]),
    }
    for i in range(6):
        tokens[f"p{i}"] = admin.create_token("globex" if i % 2 else "acme", f"p{i}")
    clients = {k: hub.client(v["token"]) for k, v in tokens.items()}
    yield {"admin": admin, "tokens": tokens, "clients": clients}
    for client in [admin, *clients.values()]:
        client.close()  # idle keep-alive connections would hold up the hub's graceful shutdown


def raw(hub, token, method, path, **kwargs):
    headers = {"authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return httpx.request(method, hub.url + path, headers=headers, timeout=30, **kwargs)


def plain_body(update_id, tier="tenant", groups=None, rng=None, consent=True):
    rng = rng or np.random.default_rng(0)
    groups = groups or {"coarse": random_update(rng)}
    return {
        "update_id": update_id,
        "tier": tier,
        "consent": {"granted": consent, "policy": "v1"},
        "groups": {
            tg: {
                "deltas": {
                    n: {
                        part: {
                            "dtype": "float32",
                            "shape": list(getattr(p, part).shape),
                            "data": base64.b64encode(getattr(p, part).astype("<f4").tobytes()).decode(),
                        }
                        for part in ("a", "b")
                    }
                    for n, p in pairs.items()
                },
                "metrics": {"perplexity_before": 20.0, "perplexity_after": 18.0, "samples": 10},
            }
            for tg, pairs in groups.items()
        },
    }


def test_health_metrics_and_openapi(hub):
    health = httpx.get(hub.url + "/health").json()
    assert health["status"] == "ok" and health["database"] == "sqlite" and health["hub_id"]
    schema = httpx.get(hub.url + "/openapi.json").json()
    assert "/v1/updates" in schema["paths"] and "/v1/gossip/sync" in schema["paths"]
    assert httpx.get(hub.url + "/docs").status_code == 200
    metrics = httpx.get(hub.url + "/metrics").text
    assert 'hub_requests_total{method="GET",route="/health",status="200"}' in metrics


def test_authentication_and_roles(hub, world):
    response = httpx.get(hub.url + "/v1/rounds")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert raw(hub, "rvh_not-a-token", "GET", "/v1/rounds").status_code == 401
    alice = world["tokens"]["alice"]["token"]
    assert raw(hub, alice, "POST", "/v1/admin/tenants", json={"name": "mine"}).status_code == 403
    assert raw(hub, alice, "GET", "/v1/admin/audit").status_code == 403
    assert raw(hub, alice, "POST", "/v1/rounds", json={}).status_code in (403, 422)
    assert world["clients"]["alice"].me() == {
        "kind": "client",
        "tenant": "acme",
        "client_id": "alice",
        "groups": ["rad"],
    }
    admin = world["admin"]
    temp = admin.create_token("acme", "temp")
    assert hub.client(temp["token"]).me()["client_id"] == "temp"
    admin.revoke_token(temp["token_id"])
    with pytest.raises(HubRequestError) as info:
        hub.client(temp["token"]).me()
    assert info.value.status == 401


def test_tenant_isolation(hub, world):
    admin, clients, tokens = world["admin"], world["clients"], world["tokens"]
    round_ = admin.open_round(
        tier="tenant", tenant="acme", timestep_group="coarse", shapes=SMALL_SHAPES, release_rank=0
    )
    group_round = admin.open_round(
        tier="group", tenant="acme", group="rad", timestep_group="fine", shapes=SMALL_SHAPES
    )
    eve = tokens["eve"]["token"]
    # eve cannot see acme's rounds, by listing or by id
    assert round_["id"] not in [r["id"] for r in clients["eve"].rounds()]
    assert raw(hub, eve, "GET", f"/v1/rounds/{round_['id']}").status_code == 404
    assert raw(hub, eve, "GET", f"/v1/rounds/{group_round['id']}").status_code == 404
    # her tenant-tier update lands in globex's scope, where no round is open: it cannot reach acme's
    response = raw(hub, eve, "POST", "/v1/updates", json=plain_body("eve-1"))
    assert response.status_code == 409 and "no open tenant round" in response.json()["detail"]
    # naming another tenant in the body is not part of the protocol
    body = plain_body("eve-2")
    body["tenant"] = "acme"
    assert raw(hub, eve, "POST", "/v1/updates", json=body).status_code == 422
    # a sealed update into acme's group round, although eve is in a group called rad too
    part = {
        "round_id": group_round["id"],
        "nonce": base64.b64encode(b"\0" * 12).decode(),
        "ciphertext": base64.b64encode(b"\0" * 32).decode(),
    }
    sealed = {
        "update_id": "eve-3",
        "tier": "group",
        "group": "rad",
        "consent": {"granted": True, "policy": "v1"},
        "sealed": {"fine": part},
    }
    assert raw(hub, eve, "POST", "/v1/updates", json=sealed).status_code == 404
    # bob is in acme but not in rad
    bob_sealed = {**sealed, "update_id": "bob-3"}
    assert raw(hub, tokens["bob"]["token"], "POST", "/v1/updates", json=bob_sealed).status_code == 403
    # acme's members contribute; eve cannot read their receipts, the release, or close the round
    rng = np.random.default_rng(1)
    updates = {name: random_update(rng) for name in ("alice", "bob", "carol")}
    for name, pairs in updates.items():
        clients[name].submit(
            client_update(
                f"{name}-1", Tier.TENANT, {"coarse": pairs}, samples={"alice": 1, "bob": 2, "carol": 3}[name]
            )
        )
    assert raw(hub, eve, "GET", "/v1/updates/alice-1").status_code == 404
    assert raw(hub, eve, "POST", f"/v1/rounds/{round_['id']}/close").status_code == 403
    closed = admin.close_round(round_["id"])
    assert closed["status"] == "released"
    release_id = closed["release_id"]
    assert raw(hub, eve, "GET", f"/v1/releases/{release_id}").status_code == 404
    assert release_id not in [r["id"] for r in clients["eve"].releases()]
    # acme's members get it, and it is the exact sample-weighted mean of the products
    pairs = clients["bob"].release_pairs(release_id)
    for name, shape in SMALL_SHAPES.items():
        expected = LowRankSum(shape["out_features"], shape["in_features"])
        for who, w in (("alice", 1 / 6), ("bob", 2 / 6), ("carol", 3 / 6)):
            expected.add(updates[who][name], w)
        np.testing.assert_allclose(pairs[name].product(), expected.dense(), atol=1e-5)


def test_validation_errors_are_4xx(hub, world):
    admin, token = world["admin"], world["tokens"]["bob"]["token"]
    admin.open_round(tier="tenant", tenant="acme", timestep_group="domain", shapes=SMALL_SHAPES, max_norm=5.0)

    def post(body, **kwargs):
        return raw(
            hub,
            token,
            "POST",
            "/v1/updates",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
            **kwargs,
        )

    def with_delta(update_id, mutate):
        body = plain_body(update_id, groups={"domain": random_update(np.random.default_rng(2))})
        mutate(body["groups"]["domain"]["deltas"])
        return body

    wrong_rank = with_delta(
        "v1",
        lambda d: d["layers.0.q_proj"]["a"].update(
            shape=[3, 16], data=base64.b64encode(np.zeros((3, 16), "<f4").tobytes()).decode()
        ),
    )
    assert post(wrong_rank).status_code == 422  # A rank 3, B rank 4
    short = with_delta(
        "v2", lambda d: d["layers.0.q_proj"]["a"].update(data=base64.b64encode(b"\0" * 8).decode())
    )
    assert "bytes" in post(short).text
    nan = np.zeros((4, 16), "<f4")
    nan[0, 0] = np.nan
    assert (
        "NaN"
        in post(
            with_delta(
                "v3",
                lambda d: d["layers.0.q_proj"]["a"].update(data=base64.b64encode(nan.tobytes()).decode()),
            )
        ).text
    )
    assert (
        post(with_delta("v4", lambda d: d["layers.0.q_proj"]["a"].update(data="not base64!"))).status_code
        == 422
    )
    assert (
        post(with_delta("v5", lambda d: d["layers.0.q_proj"]["a"].update(dtype="float16"))).status_code == 422
    )
    missing = post(with_delta("v6", lambda d: d.pop("layers.1.v_proj")))
    assert missing.status_code == 422 and "layers.1.v_proj" in missing.text
    wrong_shape = np.zeros((4, 15), "<f4")
    response = post(
        with_delta(
            "v7",
            lambda d: d["layers.0.q_proj"]["a"].update(
                shape=[4, 15], data=base64.b64encode(wrong_shape.tobytes()).decode()
            ),
        )
    )
    assert response.status_code == 422 and "expects A [4, 16]" in response.text
    big = plain_body("v8", groups={"domain": random_update(np.random.default_rng(3), scale=10.0)})
    assert "exceeds the round's bound" in post(big).text
    assert post({**plain_body("v9"), "tier": "private"}).status_code == 422
    assert (
        post(
            plain_body("v10", groups={"domain": random_update(np.random.default_rng(4))}, consent=False)
        ).status_code
        == 403
    )
    assert (
        post(plain_body("v11", groups={"fine": random_update(np.random.default_rng(4))})).status_code == 409
    )
    assert (
        raw(
            hub,
            token,
            "POST",
            "/v1/updates",
            content=b"{not json",
            headers={"content-type": "application/json"},
        ).status_code
        == 422
    )
    assert (
        raw(
            hub, token, "POST", "/v1/updates", content=b"\xff", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    assert raw(hub, token, "GET", "/v1/rounds/0").status_code == 422
    too_big = "/v1/admin/tokens/32589158477190044730/revoke"  # past 64 bits: found by schemathesis
    assert raw(hub, admin.token, "POST", too_big).status_code == 422
    assert raw(hub, token, "GET", "/v1/releases/nope").status_code == 422


def test_request_size_limit_is_413(hub, world):
    token = world["tokens"]["bob"]["token"]
    huge = b'{"update_id": "' + b"x" * (3 * 2**20) + b'"}'
    assert (
        raw(
            hub, token, "POST", "/v1/updates", content=huge, headers={"content-type": "application/json"}
        ).status_code
        == 413
    )

    def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(40):
            yield b" " * 2**16

    response = raw(
        hub, token, "POST", "/v1/updates", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert raw(hub, token, "GET", "/v1/rounds").status_code == 200  # the hub is fine afterwards


def test_replays_are_idempotent(hub, world):
    admin, token = world["admin"], world["tokens"]["carol"]["token"]
    round_ = admin.open_round(
        tier="tenant", tenant="acme", timestep_group="fine", shapes=SMALL_SHAPES, strategy="fedavg"
    )
    body = json.dumps(
        plain_body("replay-1", groups={"fine": random_update(np.random.default_rng(5))})
    ).encode()
    headers = {"content-type": "application/json"}
    first = raw(hub, token, "POST", "/v1/updates", content=body, headers=headers)
    again = raw(hub, token, "POST", "/v1/updates", content=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    assert admin.round(round_["id"])["contributions"] == 1
    changed = json.dumps(
        plain_body("replay-1", groups={"fine": random_update(np.random.default_rng(6))})
    ).encode()
    assert raw(hub, token, "POST", "/v1/updates", content=changed, headers=headers).status_code == 409
    second = json.dumps(
        plain_body("replay-2", groups={"fine": random_update(np.random.default_rng(6))})
    ).encode()
    response = raw(hub, token, "POST", "/v1/updates", content=second, headers=headers)
    assert response.status_code == 409 and "one per round" in response.text
    assert admin.round(round_["id"])["contributions"] == 1


def public_round(admin, group, noise=8.0):
    return admin.open_round(
        tier="public",
        timestep_group=group,
        shapes=SMALL_SHAPES,
        dp={"clip_norm": 1.0, "noise_multiplier": noise},
    )


def test_public_budget_is_enforced(hub, world):
    admin, client = world["admin"], world["clients"]["p0"]
    first = public_round(admin, "coarse", noise=5.0)  # one contribution costs ε ≈ 0.8 of 1.0
    receipt = client.submit(
        client_update("dp-1", Tier.PUBLIC, {"coarse": random_update(np.random.default_rng(7))})
    )
    assert 0.7 < receipt["epsilon_spent"] < 0.9
    second = public_round(admin, "domain", noise=5.0)
    with pytest.raises(HubRequestError) as info:
        client.submit(client_update("dp-2", Tier.PUBLIC, {"domain": random_update(np.random.default_rng(8))}))
    assert info.value.status == 403 and "privacy budget" in str(info.value)
    assert admin.round(second["id"])["contributions"] == 0
    budget = client.budget()
    assert budget["contributions"] == 1 and budget["epsilon_spent"] == pytest.approx(receipt["epsilon_spent"])
    assert "hub_budget_refusals_total 1.0" in httpx.get(hub.url + "/metrics").text
    for r in (first, second):
        admin.close_round(r["id"])


def test_k_anonymity_and_the_audit_log(hub, world):
    admin, clients = world["admin"], world["clients"]
    rng = np.random.default_rng(9)
    few = public_round(admin, "fine")
    for name in ("alice", "bob", "carol", "eve"):  # four distinct contributors
        clients[name].submit(client_update(f"{name}-kanon", Tier.PUBLIC, {"fine": random_update(rng)}))
    closed = admin.close_round(few["id"], reopen=True)
    assert closed["status"] == "withheld" and closed["release_id"] is None
    assert "k-anonymity: 4 distinct contributors" in closed["outcome"]
    assert not [r for r in clients["alice"].releases("fine") if r["round_id"] == few["id"]]
    nxt = next(r for r in admin.rounds("open") if r["tier"] == "public" and r["timestep_group"] == "fine")
    for name in ("alice", "bob", "carol", "eve", "p1"):
        clients[name].submit(client_update(f"{name}-kanon-2", Tier.PUBLIC, {"fine": random_update(rng)}))
    released = admin.close_round(nxt["id"])
    assert released["status"] == "released"
    release = clients["eve"].release(released["release_id"])  # public: every tenant reads it
    assert release["contributors"] == 5 and release["details"]["noise_multiplier"] == 8.0
    entries = admin.audit()
    kinds = [e["kind"] for e in entries]
    assert "withheld" in kinds and "release" in kinds and "token-issued" in kinds
    entry = next(e for e in entries if e["kind"] == "release" and e["subject"] == str(nxt["id"]))
    assert entry["details"]["contributor_count"] == 5 and entry["details"]["epsilon"] > 0
    assert sorted(entry["details"]["contributors"]) == sorted(
        ["acme/alice", "acme/bob", "acme/carol", "globex/eve", "globex/p1"]
    )
    assert admin.verify_audit() == {"entries": len(entries), "intact": True, "first_bad": None}
