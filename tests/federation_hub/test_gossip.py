"""Three hub processes gossiping on loopback through TCP links the test can cut: convergence,
a hub killed with SIGKILL mid-round and restarted, a partition that heals, and authentication."""

import base64
import hashlib
import json
import time

import httpx
import numpy as np
import pytest

from federation_hub import safetensors_io
from federation_hub.aggregate.lora import LoraPair
from federation_hub.codec import RELEASE_KEY, encode_release
from federation_hub.gossip.signing import sign_headers
from federation_hub.tiers import Tier
from tests.federation_hub.hubs import SMALL_SHAPES, HubProcess, client_update, random_update
from tests.federation_hub.proxy import Link

SECRET = b"federation-secret-" + b"x" * 32
NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    (root / "secret").write_bytes(SECRET)
    hubs = {name: HubProcess(root / name) for name in NAMES}
    # links[(x, y)]: how hub x reaches hub y
    links = {(x, y): Link(hubs[y].port) for x in NAMES for y in NAMES if x != y}
    for name, hub in hubs.items():
        peers = ",".join(links[(name, other)].url for other in NAMES if other != name)
        hub.extra_args = [
            "--hub-id", name, "--peers", peers, "--gossip-secret-file", str(root / "secret"),
            "--gossip-interval", "0.3", "--k-anonymity", "2",
        ]  # fmt: skip
    for hub in hubs.values():
        hub.launch()
    for hub in hubs.values():
        hub.wait_ready()
    clients = {}
    for name, hub in hubs.items():
        admin = hub.admin()
        admin.create_tenant("t")
        clients[name] = [hub.client(admin.create_token("t", f"{name}{i}")["token"]) for i in range(2)]
    yield hubs, links, clients
    for hub in hubs.values():
        hub.kill()
    for link in links.values():
        link.close()


def start_round(hub):
    return hub.admin().open_round(
        tier="public",
        timestep_group="coarse",
        shapes=SMALL_SHAPES,
        dp={"clip_norm": 1.0, "noise_multiplier": 20.0},
    )


def contribute(clients, round_id, rng):
    for client in clients:
        client.submit(
            client_update(
                f"u{client.me()['client_id']}-{round_id}", Tier.PUBLIC, {"coarse": random_update(rng)}
            )
        )


def release_at(hub, clients, rng) -> str:
    round_ = start_round(hub)
    contribute(clients, round_["id"], rng)
    return hub.admin().close_round(round_["id"])["release_id"]


def held(hub) -> dict[str, str]:
    return {r["id"]: r["digest"] for r in hub.admin().releases(limit=1000)}


def wait_until(condition, timeout=45.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_gossip_needs_the_shared_secret(federation):
    hubs, _, clients = federation
    body = json.dumps({"hub_id": "b", "vv": {}, "entries": []}).encode()

    def post(content=body, **headers):
        return httpx.post(
            hubs["a"].url + "/v1/gossip/sync",
            content=content,
            headers={"content-type": "application/json", **headers},
        )

    assert post().status_code == 401
    assert (
        post(authorization=f"Bearer {clients['a'][0].token}").status_code == 401
    )  # a client token is not a hub
    assert (
        post(**sign_headers(b"w" * 40, "POST", "/v1/gossip/sync", "b", body, time.time())).status_code == 401
    )
    right = sign_headers(SECRET, "POST", "/v1/gossip/sync", "b", body, time.time())
    assert post(body + b" ", **right).status_code == 401  # not the body that was signed
    stale = sign_headers(SECRET, "POST", "/v1/gossip/sync", "b", body, time.time() - 3600)
    assert post(**stale).status_code == 401
    impostor = sign_headers(SECRET, "POST", "/v1/gossip/sync", "c", body, time.time())
    assert post(**impostor).status_code == 401  # signed as c, speaks for b
    assert post(**right).status_code == 200


def signed_post(hub, body: bytes, sender="b"):
    headers = {
        "content-type": "application/json",
        **sign_headers(SECRET, "POST", "/v1/gossip/sync", sender, body, time.time()),
    }
    return httpx.post(hub.url + "/v1/gossip/sync", content=body, headers=headers)


def test_a_peer_cannot_plant_bad_releases(federation):
    """A peer with the shared secret is trusted to be who it is, not to be correct: whatever does
    not hold up as strictly as a client's update is skipped (and the exchange answered 200),
    a body that is not strict JSON is a 422 — never a 500, never a merge."""
    hubs, _, clients = federation
    shapes = {"l": {"rank": 1, "in_features": 2, "out_features": 2}}
    ones = LoraPair(np.ones((1, 2), np.float32), np.ones((2, 1), np.float32))
    good_payload = encode_release("coarse", {"l": ones}, {"l": 0.0})
    meta = {
        "id": "b:900",
        "origin": "b",
        "seq": 900,
        "tier": "public",
        "tenant": None,
        "timestep_group": "coarse",
        "round_id": 1,
        "strategy": "daf",
        "contributors": 5,
        "created_at": "2025-01-01T00:00:00+00:00",
        "details": {"shapes": shapes},
    }

    def entry(payload=good_payload, **changes):
        return {
            "origin": "b",
            "seq": 900,
            "meta": {**meta, **changes.pop("meta", {})},
            "payload": base64.b64encode(payload).decode(),
            "digest": changes.pop("digest", hashlib.sha256(payload).hexdigest()),
            **changes,
        }

    nan = LoraPair(np.full((1, 2), np.nan, np.float32), np.full((2, 1), np.nan, np.float32))
    wide = LoraPair(np.ones((1, 3), np.float32), ones.b)
    header = {"timestep_group": "coarse", "residuals": {"l": 0.0}}
    lying = safetensors_io.encode(
        {"coarse/l/a": ones.a, "coarse/l/b": ones.b}, {RELEASE_KEY: json.dumps(header)}
    )
    lying = lying.replace(b'"shape":[1,2]', b'"shape":[2,2]')
    bad = {  # entry: why it is refused (the hub's log says)
        "digest": (entry(digest="0" * 64), "digest does not match"),
        "meta": (entry(meta={"contributors": "many"}), "not a release summary"),
        "no shapes": (entry(meta={"details": {}}), "not a release summary"),
        "shapes": (entry(meta={"details": {"shapes": 5}}), "not a release summary"),
        "tier": (entry(meta={"tier": "tenant", "tenant": "t"}), "is not gossiped here"),
        "readers": (entry(meta={"tenant": "t"}), "not a release summary"),  # public, yet a tenant's
        "seq": (entry(meta={"seq": 901}), "names another origin or seq"),
        "group": (entry(meta={"timestep_group": "fine"}), "meta says 'fine'"),
        "garbage": (entry(payload=b"garbage"), "shorter than a safetensors header"),
        "nan": (entry(payload=encode_release("coarse", {"l": nan}, {"l": 0.0})), "NaN or infinity"),
        "linears": (entry(payload=encode_release("coarse", {"m": ones}, {"m": 0.0})), "linears differ"),
        "in": (entry(payload=encode_release("coarse", {"l": wide}, {"l": 0.0})), "do not fit in 2, out 2"),
        "residual": (
            entry(payload=encode_release("coarse", {"l": ones}, {"l": 3.0})),
            "not a number in [0, 1]",
        ),
        "size": (entry(payload=lying), "lies about its size"),
        "header": (entry(payload=b"\xff" * 8 + b"{}"), "over the limit"),
        "forged": (
            {**entry(), "origin": "a", "meta": {**meta, "origin": "a", "id": "a:900"}},
            "claims to be ours",
        ),
    }
    before = len(rejections(hubs["a"]))
    entries = [e for e, _ in bad.values()]
    response = signed_post(hubs["a"], json.dumps({"hub_id": "b", "vv": {}, "entries": entries}).encode())
    assert response.status_code == 200 and response.json()["merged"] == 0
    whys = rejections(hubs["a"])[before:]
    assert len(whys) == len(bad)
    for (name, (_, reason)), why in zip(bad.items(), whys, strict=True):
        assert reason in why, (name, why)
    assert "b:900" not in held(hubs["a"]) and "a:900" not in held(hubs["a"])
    assert clients["a"][0].releases() is not None  # listings still render
    for body in (b'{"hub_id": "b", "vv": {"a": NaN}, "entries": []}', b'{"hub_id": "b", "vv": {"a": 1e400}}'):
        response = signed_post(hubs["a"], body)
        assert response.status_code == 422 and set(response.json()) == {"detail", "errors"}
    malformed = [
        {"hub_id": "b", "vv": {}, "entries": 5},
        {"hub_id": "b", "vv": {}, "entries": [{**entry(), "seq": 10**30}]},
        {"hub_id": "b", "vv": {}, "entries": [{**entry(), "meta": [1, 2]}]},
    ]
    for message in malformed:
        assert signed_post(hubs["a"], json.dumps(message).encode()).status_code == 422


def rejections(hub) -> list[str]:
    lines = [json.loads(line) for line in hub.log.read_text().splitlines() if "gossip entry rejected" in line]
    return [line["why"] for line in lines]


def test_three_hubs_converge_survive_sigkill_and_heal_a_partition(federation):
    hubs, links, clients = federation
    rng = np.random.default_rng(0)
    releases = [release_at(hubs[name], clients[name], rng) for name in NAMES]
    wait_until(lambda: all(set(held(h)) == set(releases) for h in hubs.values()))
    assert len({json.dumps(held(h), sort_keys=True) for h in hubs.values()}) == 1  # same digests everywhere
    # the factors a peer serves are the origin's, bit for bit
    assert clients["c"][0].release(releases[0])["deltas"] == clients["a"][0].release(releases[0])["deltas"]

    # SIGKILL b in the middle of a round; a and c carry on; b restarts, catches up, finishes its round
    mid = start_round(hubs["b"])
    contribute(clients["b"][:1], mid["id"], rng)
    hubs["b"].kill()
    releases.append(release_at(hubs["a"], clients["a"], rng))
    wait_until(lambda: set(held(hubs["c"])) == set(releases))
    hubs["b"].start()
    contribute(clients["b"][1:], mid["id"], rng)  # the contribution accepted before the kill is still there
    closed = hubs["b"].admin().close_round(mid["id"])
    assert closed["status"] == "released" and closed["contributions"] == 2
    releases.append(closed["release_id"])
    wait_until(lambda: all(set(held(h)) == set(releases) for h in hubs.values()))

    # partition {a} | {b, c}: each side keeps releasing; neither sees the other's
    for x, y in [("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")]:
        links[(x, y)].cut()
    lonely = release_at(hubs["a"], clients["a"], rng)
    together = release_at(hubs["b"], clients["b"], rng)
    wait_until(lambda: together in held(hubs["c"]))
    time.sleep(1.5)  # several gossip periods
    assert together not in held(hubs["a"]) and lonely not in held(hubs["b"]) and lonely not in held(hubs["c"])
    for link in links.values():
        link.heal()
    releases += [lonely, together]
    wait_until(lambda: all(set(held(h)) == set(releases) for h in hubs.values()))
    assert len({json.dumps(held(h), sort_keys=True) for h in hubs.values()}) == 1
    metrics = httpx.get(hubs["a"].url + "/metrics").text
    assert 'hub_gossip_exchanges_total{outcome="failed"' in metrics and "hub_gossip_merged_total" in metrics
    for hub in hubs.values():
        assert hub.admin().verify_audit()["intact"]
