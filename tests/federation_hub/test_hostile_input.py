"""Hostile JSON against every route of a real hub: NaN, ±Infinity, numbers past float range and lone
surrogates are 422s with the one error shape, never 500s (the outside probe's findings), and every
error reply — whoever answers it — is `{"detail": "<one line>", "errors": [...]}`."""

import httpx
import pytest

from federation_hub.strict_json import loads
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
