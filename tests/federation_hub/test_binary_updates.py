"""Safetensors update bodies against a real hub: accepted and stored as they arrived, float16 only
where the round accepts it, and every bad body — one that lies about its sizes, unknown dtypes,
duplicate or missing tensors, non-finite values, a header too large — a 4xx naming the problem,
with nothing stored and the hub unharmed."""

import base64
import json
import sqlite3
import struct

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation_hub import codec, safetensors_io
from federation_hub.aggregate.lora import LoraPair, LowRankSum
from federation_hub.tiers import Tier
from tests.federation_hub.hubs import SMALL_SHAPES, client_update, random_update

METRICS = {"perplexity_before": 20.0, "perplexity_after": 18.0, "samples": 10}


def header(update_id, groups=("coarse",), **changes):
    value = {
        "update_id": update_id,
        "tier": "tenant",
        "consent": {"granted": True, "policy": "v1"},
        "groups": {tg: {"metrics": METRICS} for tg in groups},
    }
    return {**value, **changes}


def tensors(pairs, tg="coarse", dtype=np.float32):
    return {
        f"{tg}/{n}/{p}": getattr(pair, p).astype(dtype) for n, pair in sorted(pairs.items()) for p in "ab"
    }


def body(update_id, pairs=None, meta=None, dtype=np.float32, **changes) -> bytes:
    pairs = pairs or random_update(np.random.default_rng(abs(hash(update_id)) % 2**32))
    meta = meta or {codec.UPDATE_KEY: json.dumps(header(update_id, **changes))}
    return safetensors_io.encode(tensors(pairs, dtype=dtype), meta)


@pytest.fixture(scope="module")
def world(hub):
    admin = hub.admin()
    admin.create_tenant("bin")
    tokens = [admin.create_token("bin", f"c{i}")["token"] for i in range(8)]
    coarse = admin.open_round(tier="tenant", tenant="bin", timestep_group="coarse", shapes=SMALL_SHAPES)
    fine = admin.open_round(
        tier="tenant",
        tenant="bin",
        timestep_group="fine",
        shapes=SMALL_SHAPES,
        accept_float16=True,
        strategy="fedavg",
        release_rank=0,
    )
    return {"admin": admin, "tokens": tokens, "coarse": coarse["id"], "fine": fine["id"]}


def post(hub, token, content: bytes, content_type=codec.MEDIA_TYPE):
    headers = {"authorization": f"Bearer {token}", "content-type": content_type}
    return httpx.post(hub.url + "/v1/updates", content=content, headers=headers, timeout=30)


def stored(hub, round_id) -> list[bytes | None]:
    """The round's stored payloads (None once folded into a running sum and dropped)."""
    with sqlite3.connect(hub.database_url.removeprefix("sqlite:///")) as db:
        rows = db.execute("SELECT payload FROM contributions WHERE round_id = ? ORDER BY id", (round_id,))
        return [None if p is None else bytes(p) for (p,) in rows]


def test_a_binary_update_is_stored_as_it_arrived(hub, world):
    # a clustering round keeps payloads until it closes (it may exclude any of them)
    kept = world["admin"].open_round(
        tier="tenant", tenant="bin", timestep_group="keep", shapes=SMALL_SHAPES, strategy="conservative"
    )
    token = world["tokens"][0]
    content = safetensors_io.encode(
        tensors(random_update(np.random.default_rng(11)), "keep"),
        {codec.UPDATE_KEY: json.dumps(header("b-1", groups=("keep",)))},
    )
    first = post(hub, token, content)
    assert first.status_code == 201, first.text
    assert post(hub, token, content).json() == {**first.json(), "duplicate": True}
    assert stored(hub, kept["id"]) == [content]  # the same safetensors bytes, not re-encoded
    other = safetensors_io.encode(
        tensors(random_update(np.random.default_rng(12)), "keep"),
        {codec.UPDATE_KEY: json.dumps(header("b-1", groups=("keep",)))},
    )
    assert post(hub, token, other).status_code == 409


def test_float16_only_where_the_round_accepts_it(hub, world):
    token = world["tokens"][1]
    pairs = random_update(np.random.default_rng(5))
    refused = post(hub, token, body("f-1", pairs, dtype=np.float16))
    assert refused.status_code == 422 and "accept_float16" in refused.json()["detail"]
    domain = world["admin"].open_round(
        tier="tenant", tenant="bin", timestep_group="domain", shapes=SMALL_SHAPES, accept_float16=True
    )
    both = safetensors_io.encode(
        {**tensors(pairs, "coarse", np.float16), **tensors(pairs, "domain", np.float16)},
        {codec.UPDATE_KEY: json.dumps(header("f-2", groups=("coarse", "domain")))},
    )
    assert post(hub, token, both).status_code == 422  # coarse does not, so nothing is stored
    assert stored(hub, domain["id"]) == []
    half = safetensors_io.encode(
        tensors(pairs, "domain", np.float16),
        {codec.UPDATE_KEY: json.dumps(header("f-3", groups=("domain",)))},
    )
    assert post(hub, token, half).status_code == 201
    assert len(stored(hub, domain["id"])) == 1 and len(half) < len(body("x", pairs))


def test_the_client_sends_float16_where_accepted_and_the_release_is_exact(hub, world):
    """One body for two rounds, float16 only for the one that accepts it; the release of that
    round is the exact mean of what was sent (the float16 values, widened)."""
    admin, rng = world["admin"], np.random.default_rng(7)
    updates, sent = {}, []
    for i, token in enumerate(world["tokens"][2:5]):
        updates[i] = {"fine": random_update(rng), "coarse": random_update(rng)}
        client = hub.client(token, event_hooks={"request": [sent.append]})
        client.submit(client_update(f"c-{i}", Tier.TENANT, updates[i]))
    bodies = [safetensors_io.decode(r.content)[0] for r in sent if r.method == "POST"]
    assert len(bodies) == 3 and all(r.headers["content-type"] == codec.MEDIA_TYPE for r in sent if r.content)
    for tensors_sent in bodies:
        dtypes = {name.split("/")[0]: array.dtype.name for name, array in tensors_sent.items()}
        assert dtypes == {"fine": "float16", "coarse": "float32"}  # fine accepts float16, coarse not
    assert len(stored(hub, world["fine"])) == 3
    closed = admin.close_round(world["fine"], reopen=True)
    released = hub.client(world["tokens"][2]).release_pairs(closed["release_id"])
    for name, shape in SMALL_SHAPES.items():
        expected = LowRankSum(shape["out_features"], shape["in_features"])
        for i in updates:
            pair = updates[i]["fine"][name]
            expected.add(LoraPair(pair.a.astype(np.float16), pair.b.astype(np.float16)), 1 / 3)
        np.testing.assert_allclose(released[name].product(), expected.dense(), atol=1e-6)


def raw_body(header_json: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header_json)) + header_json + data


def duplicate_tensors() -> bytes:
    pairs = random_update(np.random.default_rng(1))
    good = body("dup", pairs)
    (length,) = struct.unpack_from("<Q", good)
    text = good[8 : 8 + length].decode().rstrip()
    name = "coarse/layers.0.q_proj/a"
    entry = text[text.index(f'"{name}"') :].split("}", 1)[0] + "}"
    doubled = text[:-1] + "," + entry + "}"  # the same name twice
    return raw_body(doubled.encode(), good[8 + length :])


def with_value(update_id, value, dtype=np.float32):
    pairs = random_update(np.random.default_rng(2))
    pairs["layers.1.v_proj"].b[0, 0] = value
    with np.errstate(over="ignore"):  # float16 overflowing to infinity is the point
        return body(update_id, pairs, dtype=dtype)


BAD = {
    "lies about its size": lambda: body("lie").replace(b'"shape":[4,16]', b'"shape":[4,17]', 1),
    "unknown dtype": lambda: body("dt").replace(b'"dtype":"F32"', b'"dtype":"I32"', 1),
    "duplicate key": duplicate_tensors,
    "is missing": lambda: safetensors_io.encode(
        {
            k: v
            for k, v in tensors(random_update(np.random.default_rng(3))).items()
            if not k.endswith("q_proj/b")
        },
        {codec.UPDATE_KEY: json.dumps(header("miss"))},
    ),
    "expects other linears": lambda: safetensors_io.encode(
        {
            k: v
            for k, v in tensors(random_update(np.random.default_rng(3))).items()
            if "layers.1.v_proj" not in k
        },
        {codec.UPDATE_KEY: json.dumps(header("few"))},
    ),
    "NaN or infinity": lambda: with_value("nan", np.nan),
    "NaN or infinity ": lambda: with_value("inf16", 1e6, np.float16),  # float16 overflows to infinity
    "over the limit": lambda: struct.pack("<Q", 2**31) + b"{}",
    "runs past the end": lambda: struct.pack("<Q", 4096) + b"{}",
    "not strict JSON": lambda: raw_body(b'{"x": NaN}', b""),
    "unexpected tensor": lambda: safetensors_io.encode(
        {**tensors(random_update(np.random.default_rng(3))), "coarse/nonce": np.zeros(12, np.uint8)},
        {codec.UPDATE_KEY: json.dumps(header("extra"))},
    ),
    "metrics but no factors": lambda: body("nofine", groups=("coarse", "fine")),
    "no 'ruvdllm.update'": lambda: body("nometa", meta={"other": "x"}),
    "update_id": lambda: body("badhdr", meta={codec.UPDATE_KEY: json.dumps(header("no spaces allowed"))}),
    "samples": lambda: body(
        "m",
        meta={
            codec.UPDATE_KEY: json.dumps(
                header("m") | {"groups": {"coarse": {"metrics": {**METRICS, "samples": 0}}}}
            )
        },
    ),
}


@pytest.mark.parametrize("problem", BAD)
def test_bad_bodies_are_refused_by_name_and_nothing_is_stored(hub, world, problem):
    token, before = world["tokens"][6], len(stored(hub, world["coarse"]))
    response = post(hub, token, BAD[problem]())
    assert response.status_code == 422, response.text
    answer = response.json()
    assert problem.strip() in answer["detail"] or problem in json.dumps(answer["errors"]), answer
    assert answer["errors"] and answer["errors"][0]["loc"][0] == "body", answer  # a 422 names where
    assert len(stored(hub, world["coarse"])) == before
    assert httpx.get(hub.url + "/health").status_code == 200


def json_body(update_id, pairs) -> bytes:
    def tensor(x):
        return {
            "dtype": "float32",
            "shape": list(x.shape),
            "data": base64.b64encode(x.astype("<f4").tobytes()).decode(),
        }

    deltas = {n: {"a": tensor(p.a), "b": tensor(p.b)} for n, p in pairs.items()}
    return json.dumps(
        header(update_id) | {"groups": {"coarse": {"deltas": deltas, "metrics": METRICS}}}
    ).encode()


def test_a_problem_names_the_same_field_in_either_body(hub, world):
    """A NaN factor in a safetensors body listed no field (`errors: []`), in JSON its place."""
    token = world["tokens"][6]
    pairs = random_update(np.random.default_rng(4))
    pairs["layers.0.q_proj"].a[0, 0] = np.nan
    binary = post(hub, token, body("same-1", pairs))
    as_json = post(hub, token, json_body("same-2", pairs), content_type="application/json")
    for response in (binary, as_json):
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["loc"] == [
            "body",
            "groups",
            "coarse",
            "deltas",
            "layers.0.q_proj",
            "a",
        ]
    pairs["layers.0.q_proj"].a[0, 0] = 0.0
    half = post(hub, token, body("same-3", pairs, dtype=np.float16))  # a rule of the round, not the reader
    assert half.status_code == 422 and half.json()["errors"][0]["loc"] == ["body", "groups", "coarse"]


def test_other_media_types_are_415(hub, world):
    response = post(hub, world["tokens"][6], body("mt"), content_type="text/plain")
    assert response.status_code == 415 and "application/octet-stream" in response.json()["detail"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_damaged_bodies_never_reach_a_5xx(hub, world, data):
    blob = bytearray(body("fuzz"))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(blob) - 1))
        if data.draw(st.booleans()):
            blob[at] = data.draw(st.integers(0, 255))
        else:
            del blob[at : at + data.draw(st.integers(1, 64))]
    response = post(hub, world["tokens"][7], bytes(blob))
    assert response.status_code < 500, response.text


def test_the_schema_documents_both_bodies(hub):
    schema = httpx.get(hub.url + "/openapi.json").json()
    content = schema["paths"]["/v1/updates"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", codec.MEDIA_TYPE}
    assert "UpdateHeader" in content[codec.MEDIA_TYPE]["schema"]["description"]
    assert {"UpdateHeader", "PlainHeader", "SealedHeader", "PlainUpdate", "Problem"} <= set(
        schema["components"]["schemas"]
    )
    release = schema["paths"]["/v1/releases/{release_id}"]["get"]["responses"]["200"]["content"]
    assert codec.MEDIA_TYPE in release and "application/json" in release
