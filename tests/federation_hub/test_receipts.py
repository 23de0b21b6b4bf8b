"""Operators read update receipts — any client's, to reconcile after a crash without every
client's token — and every such read is in the audit log. Clients still read only their own."""

import numpy as np
import pytest

from federation_hub.client import HubRequestError
from federation_hub.tiers import Tier
from tests.federation_hub.hubs import SMALL_SHAPES, client_update, random_update


def test_admins_read_receipts_and_the_reads_are_audited(hub):
    admin = hub.admin()
    admin.create_tenant("recon")
    admin.create_tenant("other")
    tokens = {name: admin.create_token("recon", name)["token"] for name in ("r1", "r2")}
    stranger = admin.create_token("other", "s")["token"]
    admin.open_round(tier="tenant", tenant="recon", timestep_group="coarse", shapes=SMALL_SHAPES)
    rng = np.random.default_rng(0)
    sent = {
        name: hub.client(token).submit(
            client_update(f"{name}-1", Tier.TENANT, {"coarse": random_update(rng)})
        )
        for name, token in tokens.items()
    }

    one = admin.receipt("recon", "r1", "r1-1")
    assert one["receipt"] == sent["r1"] and one["tenant"] == "recon" and one["client_id"] == "r1"
    listed = admin.receipts("recon")
    assert [(r["client_id"], r["update_id"]) for r in listed] == [("r1", "r1-1"), ("r2", "r2-1")]
    assert admin.receipts("recon", after=listed[0]["seq"]) == listed[1:]  # paged
    assert admin.receipts("recon", client_id="r2") == listed[1:]
    assert admin.receipts("other") == []
    with pytest.raises(HubRequestError) as info:
        admin.receipt("recon", "r1", "never-sent")
    assert info.value.status == 404

    reads = [e for e in admin.audit() if e["kind"] == "receipts-read"]
    assert [e["subject"] for e in reads] == [
        "recon/r1/r1-1",
        "recon",
        "recon",
        "recon/r2",
        "other",
        "recon/r1/never-sent",
    ]
    assert reads[-1]["details"] == {"returned": 0}
    assert admin.verify_audit()["intact"]

    for token in (tokens["r2"], stranger):  # clients: their own receipts only, no operator reads
        client = hub.client(token)
        with pytest.raises(HubRequestError) as info:
            client.request("GET", "/v1/admin/updates/recon/r1/r1-1")
        assert info.value.status == 403
    with pytest.raises(HubRequestError) as info:
        hub.client(stranger).request("GET", "/v1/updates/r1-1")
    assert info.value.status == 404
