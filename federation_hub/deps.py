"""FastAPI dependencies: the shared state and the authenticated caller. Routers declare what they
need (`Depends(admin)`, `Depends(client)`); tests may swap these with `dependency_overrides`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from federation_hub.auth import Caller, is_admin_token, token_hash
from federation_hub.errors import Forbidden, Unauthorized
from federation_hub.services.state import HubState

bearer = HTTPBearer(
    auto_error=False, description="an admin token or a client token issued by POST /v1/admin/tokens"
)


def hub(request: Request) -> HubState:
    return request.app.state.hub


State = Annotated[HubState, Depends(hub)]


def caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    state: State,
) -> Caller:
    if credentials is None:
        raise Unauthorized("authorization: send 'Authorization: Bearer <token>'")
    token = credentials.credentials
    if is_admin_token(token, state.settings.admin_token_hash):
        found = Caller(kind="admin")
    else:
        record = state.store.token_by_hash(token_hash(token))
        if record is None or record.revoked:
            raise Unauthorized("token: unknown or revoked")
        found = Caller(kind="client", tenant=record.tenant, client_id=record.client_id, groups=record.groups)
    request.scope.setdefault("state", {})["caller"] = "admin" if found.kind == "admin" else found.client_key
    return found


AnyCaller = Annotated[Caller, Depends(caller)]


def admin(who: AnyCaller) -> Caller:
    if who.kind != "admin":
        raise Forbidden("this operation needs the admin token")
    return who


def client(who: AnyCaller) -> Caller:
    if who.kind != "client":
        raise Forbidden("this operation needs a client token")
    return who


Admin = Annotated[Caller, Depends(admin)]
Client = Annotated[Caller, Depends(client)]
