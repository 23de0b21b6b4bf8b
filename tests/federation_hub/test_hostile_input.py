"""Hostile JSON against every route of a real hub: NaN, ±Infinity, numbers past float range and lone
surrogates are 422s with the one error shape, never 500s (the outside probe's findings), and every
error reply — whoever answers it — is `{"detail": "<one line>", "errors": [...]}`."""

import base64
import json

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation_hub.strict_json import duplicate_key, loads
from tests.federation_hub.hubs import SMALL_SHAPES

HOSTILE = {
    "nan": b'{"x": NaN}',
    "infinity": b'{"x": [-Infinity]}',
    "overflow": b'{"x": 1e400}',
    "lone surrogate value": b'{"x": "\\ud800"}',
    "lone surrogate key": b'{"\\udfff": 1}',
}


@pytest.fixture(scope="module")
def world(hub):
    admin = hub.admin()
    admin.create_tenant("hostile")
    token = admin.create_token("hostile", "h")["token"]
    round_ = admin.open_round(tier="tenant", tenant="hostile", timestep_group="coarse", shapes=SMALL_SHAPES)
    return {"admin": hub.admin_token, "client": token, "round": round_["id"]}


def post(hub, token, path, body: bytes, content_type="application/json"):
    headers = {"authorization": f"Bearer {token}", "content-type": content_type}
    return httpx.post(hub.url + path, content=body, headers=headers, timeout=30)


def assert_problem(response, status: int | None) -> dict:
    """`status` None: any 4xx (which one depends on whether the role or the body is checked first)."""
    if status is None:
        assert 400 <= response.status_code < 500, response.text
    else:
        assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "errors"} and isinstance(body["detail"], str), body
    assert "\n" not in body["detail"]
    return body


@pytest.mark.parametrize("kind", HOSTILE)
def test_the_probes_requests_are_422(hub, world, kind):
    """The exact requests that answered 500, and their siblings."""
    admin = world["admin"]
    bodies = {
        "/v1/rounds": b'{"tier": "public", "timestep_group": "coarse", "shapes": {}, "max_norm": NaN}',
        f"/v1/rounds/{world['round']}/close": b'{"reopen": NaN}',
        "/v1/admin/tokens": b'{"tenant": "hostile", "client_id": NaN}',
        "/v1/admin/tenants": b'{"name": "\\ud800"}',
    }
    for path, body in bodies.items():
        problem = assert_problem(post(hub, admin, path, body), 422)
        assert problem["errors"] and problem["errors"][0]["loc"][0] == "body"
    for path in bodies:
        assert_problem(post(hub, admin, path, HOSTILE[kind]), 422)
    assert world["round"] in [r["id"] for r in hub.admin().rounds("open")]  # the close never happened


@pytest.mark.parametrize("role", ["admin", "client"])
def test_every_route_with_a_body_refuses_hostile_json(hub, world, role):
    schema = httpx.get(hub.url + "/openapi.json").json()
    with_body = [
        path.replace("{round_id}", str(world["round"])).replace("{token_id}", "1")
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if method == "post" and "requestBody" in operation
    ]
    assert "/v1/updates" in with_body and "/v1/gossip/sync" in with_body
    for path in with_body:
        for body in HOSTILE.values():
            assert_problem(post(hub, world[role], path, body), None)


def test_update_errors_name_the_field_not_the_union_tag(hub, world):
    body = (
        b'{"update_id": "u1", "tier": "tenant", "consent": {"granted": true, "policy": "v1"},'
        b' "groups": {"coarse": {"deltas": {}, "metrics": {"perplexity_before": 2,'
        b' "perplexity_after": 1, "samples": 0}}}}'
    )
    problem = assert_problem(post(hub, world["client"], "/v1/updates", body), 422)
    locs = [e["loc"] for e in problem["errors"]]
    assert ["body", "groups", "coarse", "metrics", "samples"] in locs, locs
    assert all(loc[1] != "tenant" for loc in locs)
    assert problem["detail"].startswith("body.groups.coarse.")
    untagged = assert_problem(post(hub, world["client"], "/v1/updates", b'{"tier": "private"}'), 422)
    assert untagged["errors"][0]["loc"] == ["body", "tier"]


def test_every_kind_of_error_has_the_one_shape(hub, world):
    client = world["client"]
    assert_problem(httpx.get(hub.url + "/v1/rounds"), 401)  # no token
    assert_problem(post(hub, client, "/v1/admin/tenants", b'{"name": "x"}'), 403)  # role
    assert_problem(
        httpx.get(hub.url + "/v1/rounds/999999", headers={"authorization": f"Bearer {client}"}), 404
    )
    assert_problem(httpx.get(hub.url + "/no/such/route"), 404)  # the router's own 404
    assert_problem(httpx.put(hub.url + "/v1/rounds"), 405)
    assert_problem(post(hub, world["admin"], "/v1/admin/tenants", b'{"name": "hostile"}'), 409)
    assert_problem(post(hub, client, "/v1/updates", b" " * (3 * 2**20)), 413)
    assert_problem(post(hub, client, "/v1/updates", b"{"), 422)
    assert_problem(httpx.get(hub.url + "/v1/rounds/0", headers={"authorization": f"Bearer {client}"}), 422)


@pytest.mark.parametrize("text", ["NaN", "-Infinity", "1e309", '"\\ud800"', '{"\\udc00": 1}', "[" * 100_000])
def test_strict_loads_refuses_what_json_does_not_allow(text):
    with pytest.raises(ValueError):
        loads(text)


def test_strict_loads_keeps_valid_json():
    assert loads('{"a": [1, 2.5, -1e308, "\\ud83d\\ude00", null, true]}') == {
        "a": [1, 2.5, -1e308, "\U0001f600", None, True]
    }


def update_text(update_id: str) -> str:
    """A valid tenant update for the module's round, as JSON text (to splice duplicates into)."""
    rng = np.random.default_rng(0)

    def tensor(shape):
        data = (rng.standard_normal(shape) * 0.01).astype("<f4")
        return {"dtype": "float32", "shape": list(shape), "data": base64.b64encode(data.tobytes()).decode()}

    deltas = {
        name: {"a": tensor((s["rank"], s["in_features"])), "b": tensor((s["out_features"], s["rank"]))}
        for name, s in SMALL_SHAPES.items()
    }
    metrics = {"perplexity_before": 20.0, "perplexity_after": 18.0, "samples": 10}
    return json.dumps(
        {
            "update_id": update_id,
            "tier": "tenant",
            "consent": {"granted": True, "policy": "v1"},
            "groups": {"coarse": {"deltas": deltas, "metrics": metrics}},
        }
    )


def test_update_json_refuses_duplicate_keys(hub, world):
    """pydantic's parser, which the update route uses for speed, keeps the last copy: these were
    accepted (201) though every other route refuses them."""
    text = update_text("dup-1")
    first_linear = next(iter(SMALL_SHAPES))
    copy = json.dumps(json.loads(text)["groups"]["coarse"]["deltas"][first_linear])
    duplicated = {
        "update_id": text.replace('"update_id": "dup-1"', '"update_id": "dup-0", "update_id": "dup-1"', 1),
        "tensor name": text.replace('"deltas": {', f'"deltas": {{"{first_linear}": {copy}, ', 1),
        "escaped": text.replace('"tier": "tenant"', '"tier": "tenant", "ti\\u0065r": "tenant"', 1),
    }
    for kind, body in duplicated.items():
        problem = assert_problem(post(hub, world["client"], "/v1/updates", body.encode()), 422)
        assert problem["errors"] == [{"loc": ["body"], "msg": problem["errors"][0]["msg"]}], kind
        assert "duplicate key" in problem["detail"], (kind, problem)
    assert post(hub, world["client"], "/v1/updates", text.encode()).status_code == 201  # the same, once


def test_duplicate_key_finds_what_strict_loads_refuses():
    texts = [
        '{"a": 1, "b": {"a": 2}}',
        '{"a": 1, "a": 2}',
        '[{"k": "x\\"y", "k": 0}]',
        '{"x": {"y": []}, "z": [{"y": 1}, {"y": 2}], "q": "\\\\", "x": 1}',
        '{"\\u00e9": 1, "é": 2}',
        '{"s": "{[\\"", "t": "]}"}',
    ]
    for text in texts:
        try:
            loads(text)
            refused = None
        except ValueError as exc:
            refused = str(exc)
        found = duplicate_key(text.encode())
        assert (found is None) == (refused is None), (text, found, refused)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=4),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.lists(st.tuples(st.sampled_from(["a", "b", "\\u0061", "é"]), inner), max_size=4)
        ),
        max_leaves=12,
    )
)
@settings(max_examples=200, deadline=None)
def test_duplicate_key_agrees_with_strict_loads(tree):
    """Random JSON, objects written as lists of (key, value) pairs so keys may repeat (also as an
    escape of the same key): the scan finds a duplicate exactly where the strict parser does."""
    text = _write(tree)
    try:
        loads(text)
        refused = False
    except ValueError:
        refused = True
    assert (duplicate_key(text.encode()) is not None) == refused, text


def _write(tree) -> str:
    if isinstance(tree, list) and tree and all(isinstance(x, tuple) for x in tree):
        return "{" + ", ".join(f'"{k}" :{_write(v)}' for k, v in tree) + "}"
    if isinstance(tree, list):
        return "[" + ",".join(_write(x) for x in tree) + "]"
    return json.dumps(tree, ensure_ascii=False)


def test_path_ids_are_plain_decimal(hub, world):
    """pydantic's lax int read these as rounds 1, 1 and 1000; `%201` revoked token 1."""
    client = {"authorization": f"Bearer {world['client']}"}
    round_id = world["round"]
    assert httpx.get(f"{hub.url}/v1/rounds/{round_id}", headers=client).status_code == 200
    for spelled in (f"%20{round_id}", f"+{round_id}", f"0{round_id}", "1_000", f"{round_id}.0"):
        problem = assert_problem(httpx.get(f"{hub.url}/v1/rounds/{spelled}", headers=client), 422)
        assert problem["errors"][0]["loc"] == ["path", "round_id"]
    token = hub.admin().create_token("hostile", "revoked-by-spelling")
    response = post(hub, world["admin"], f"/v1/admin/tokens/%20{token['token_id']}/revoke", b"")
    assert_problem(response, 422)
    assert hub.client(token["token"]).me()["client_id"] == "revoked-by-spelling"  # still live


@pytest.mark.parametrize(
    "content_type, body",
    [("text/plain", b'{"name": "t"}'), ("application/x-www-form-urlencoded", b"name=t"),
     ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="name"\r\n\r\nt\r\n--x--\r\n'),
     (None, b'{"name": "t"}')],
)  # fmt: skip
def test_a_body_that_is_not_json_is_415(hub, world, content_type, body):
    """It got 422 "Input should be a valid dictionary", as if the JSON were wrong."""
    round_id = world["round"]
    for path in ("/v1/admin/tenants", "/v1/admin/tokens", "/v1/rounds", f"/v1/rounds/{round_id}/close"):
        headers = {"authorization": f"Bearer {world['admin']}"}
        if content_type:
            headers["content-type"] = content_type
        response = httpx.post(hub.url + path, content=body, headers=headers)
        assert "application/json" in assert_problem(response, 415)["detail"]
    assert world["round"] in [r["id"] for r in hub.admin().rounds("open")]


def test_json_syntax_errors_read_alike_on_every_route(hub, world):
    """`loc` was ["body", <offset>] on most routes and ["body"] on the update route, whose message
    said the position twice."""
    for path, token in (("/v1/admin/tenants", world["admin"]), ("/v1/updates", world["client"])):
        problem = assert_problem(post(hub, token, path, b'{"name": }'), 422)
        assert problem["errors"][0]["loc"] == ["body"], path
        message = problem["errors"][0]["msg"]
        assert message.startswith("invalid JSON: ") and message.count("column 10") == 1, (path, message)
