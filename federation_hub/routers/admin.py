from __future__ import annotations

from typing import Annotated

from fastapi import Query

from federation_hub import audit
from federation_hub.auth import new_token, token_hash
from federation_hub.deps import Admin, AnyCaller, State
from federation_hub.errors import NotFound
from federation_hub.routers import PathId, hub_router
from federation_hub.schemas import (
    AuditEntry,
    AuditVerdict,
    Name,
    Principal,
    StoredReceipt,
    TenantIn,
    TokenIn,
    TokenOut,
    UpdateId,
    UpdateReceipt,
)
from federation_hub.storage.base import UpdateRow

router = hub_router(prefix="/v1", tags=["administration"])


@router.get("/me", response_model=Principal, summary="who this token is")
def me(who: AnyCaller) -> Principal:
    return Principal(kind=who.kind, tenant=who.tenant, client_id=who.client_id, groups=list(who.groups))


@router.post(
    "/admin/tenants", status_code=201, response_model=TenantIn, summary="create a tenant (organisation)"
)
def create_tenant(body: TenantIn, _: Admin, state: State) -> TenantIn:
    state.store.create_tenant(body.name)
    return body


@router.post(
    "/admin/tokens", status_code=201, response_model=TokenOut, summary="issue a client token (shown once)"
)
def create_token(body: TokenIn, _: Admin, state: State) -> TokenOut:
    if not state.store.tenant_exists(body.tenant):
        raise NotFound(f"tenant {body.tenant!r}: does not exist")
    token = new_token()
    token_id = state.store.create_token(token_hash(token), body.tenant, body.client_id, body.groups)
    return TokenOut(
        token_id=token_id,
        token=token,
        tenant=body.tenant,
        client_id=body.client_id,
        groups=sorted(set(body.groups)),
    )


@router.post("/admin/tokens/{token_id}/revoke", status_code=204, summary="revoke a client token")
def revoke_token(token_id: PathId, _: Admin, state: State) -> None:
    if not state.store.revoke_token(token_id):
        raise NotFound(f"token {token_id}: no such live token")


@router.get(
    "/admin/updates",
    response_model=list[StoredReceipt],
    summary="a tenant's update receipts (one client's, if named), to reconcile after a crash; audited",
)
def list_receipts(
    tenant: Annotated[Name, Query()],
    _: Admin,
    state: State,
    client_id: Annotated[Name | None, Query()] = None,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[StoredReceipt]:
    rows = state.store.list_updates(tenant, client_id, after=after, limit=limit)
    subject = f"{tenant}/{client_id}" if client_id else tenant
    state.store.append_audit("receipts-read", subject, {"after": after, "returned": len(rows)})
    return [_receipt(row) for row in rows]


@router.get(
    "/admin/updates/{tenant}/{client_id}/{update_id}",
    response_model=StoredReceipt,
    summary="one update's receipt, whichever client sent it; audited",
)
def read_receipt(tenant: Name, client_id: Name, update_id: UpdateId, _: Admin, state: State) -> StoredReceipt:
    rows = state.store.list_updates(tenant, client_id, update_id, limit=1)
    state.store.append_audit("receipts-read", f"{tenant}/{client_id}/{update_id}", {"returned": len(rows)})
    if not rows:
        raise NotFound(f"update {tenant}/{client_id}/{update_id}: not found")
    return _receipt(rows[0])


def _receipt(row: UpdateRow) -> StoredReceipt:
    return StoredReceipt(
        seq=row.seq,
        tenant=row.tenant,
        client_id=row.client_id,
        update_id=row.update_id,
        tier=row.tier,
        accepted_at=row.created_at,
        receipt=UpdateReceipt(**row.receipt),
    )


@router.get("/admin/audit", response_model=list[AuditEntry], summary="the append-only audit log")
def audit_log(
    _: Admin,
    state: State,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> list[AuditEntry]:
    return [AuditEntry(**vars(e)) for e in state.store.audit_entries(after, limit)]


@router.get("/admin/audit/verify", response_model=AuditVerdict, summary="check the audit log's hash chain")
def verify_audit(_: Admin, state: State) -> AuditVerdict:
    entries, after = [], 0
    while batch := state.store.audit_entries(after, 10000):
        entries.extend(vars(e) for e in batch)
        after = batch[-1].seq
    bad = audit.first_broken(entries)
    return AuditVerdict(entries=len(entries), intact=bad is None, first_bad=bad)
