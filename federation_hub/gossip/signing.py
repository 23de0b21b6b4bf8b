"""HMAC-SHA256 authentication of hub-to-hub requests with the federation's shared secret.

The signature covers method, path, a timestamp and the body's sha256, so it cannot be moved to
another request; the timestamp bounds replays to a window. Within the window a replay is
harmless: every gossip operation is an idempotent merge.
"""

from __future__ import annotations

import hashlib
import hmac

HUB_ID = "x-hub-id"
TIMESTAMP = "x-hub-timestamp"
SIGNATURE = "x-hub-signature"
MAX_SKEW_S = 300  # clocks of federated hubs agree to minutes (NTP), not better


def signature(secret: bytes, method: str, path: str, hub_id: str, timestamp: int, body: bytes) -> str:
    message = "\n".join([method.upper(), path, hub_id, str(timestamp), hashlib.sha256(body).hexdigest()])
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def sign_headers(
    secret: bytes, method: str, path: str, hub_id: str, body: bytes, now: float
) -> dict[str, str]:
    timestamp = int(now)
    return {
        HUB_ID: hub_id,
        TIMESTAMP: str(timestamp),
        SIGNATURE: signature(secret, method, path, hub_id, timestamp, body),
    }


def verify(secret: bytes, method: str, path: str, headers, body: bytes, now: float) -> str | None:
    """The peer's hub id when the signature holds, else None."""
    hub_id, timestamp, given = headers.get(HUB_ID), headers.get(TIMESTAMP), headers.get(SIGNATURE)
    if not (hub_id and timestamp and given) or not timestamp.isdigit():
        return None
    if abs(now - int(timestamp)) > MAX_SKEW_S:
        return None
    expected = signature(secret, method, path, hub_id, int(timestamp), body)
    return hub_id if hmac.compare_digest(expected, given) else None
