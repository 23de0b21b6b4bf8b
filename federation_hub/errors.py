"""Errors the services raise, each with the HTTP status the routers answer with. Messages are one
line and name the thing that is wrong (`ruvdllm.errors.RuvdllmError`)."""

from __future__ import annotations

from federation_hub.privacy.accountant import BudgetExhausted
from federation_hub.storage.base import Conflict
from ruvdllm.errors import RuvdllmError


class NotFound(RuvdllmError):
    """Also what a caller gets for something that exists but is not theirs: existence leaks too."""


class Invalid(RuvdllmError):
    """A body that does not fit: a safetensors body the reader refuses, or an update that does not
    fit its round (shapes, linears, norm). `loc` is the field it is about, from the body on (as
    in a JSON body: `("groups", "coarse", "deltas", "layers.0.q_proj", "a")`), where known; the
    422 lists it like a validation error's (problems.py)."""

    def __init__(self, message: str, loc: tuple[str, ...] = ()):
        super().__init__(message)
        self.loc = loc


class Forbidden(RuvdllmError):
    """Authenticated, but not allowed (role, group membership, consent)."""


class Unauthorized(RuvdllmError):
    """No credentials, or credentials the hub does not know."""


class Unsupported(RuvdllmError):
    """A body of a media type the route does not take."""


STATUS = {
    Unauthorized: 401,
    Forbidden: 403,
    BudgetExhausted: 403,
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    Unsupported: 415,
}


def status_of(error: RuvdllmError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400
