"""The audit log's hash chain: each entry's hash covers the previous entry's hash, so removing,
reordering or editing any entry breaks every hash after it. Pure functions; storage appends."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

GENESIS = "0" * 64


def canonical_time(at: datetime) -> str:
    """UTC, microseconds: the same string whichever database handed the datetime back."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(prev_hash: str, seq: int, at: datetime, kind: str, subject: str, details: dict) -> str:
    body = json.dumps(
        [prev_hash, seq, canonical_time(at), kind, subject, details], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(body.encode()).hexdigest()


def first_broken(entries: list[dict]) -> int | None:
    """seq of the first entry whose link or hash is wrong, or None if the chain is intact.
    `entries` are in seq order, starting at seq 1, each with seq/at/kind/subject/details/prev_hash/hash."""
    prev = GENESIS
    for expected_seq, entry in enumerate(entries, start=1):
        if entry["seq"] != expected_seq or entry["prev_hash"] != prev:
            return entry["seq"]
        digest = entry_hash(
            prev, entry["seq"], entry["at"], entry["kind"], entry["subject"], entry["details"]
        )
        if digest != entry["hash"]:
            return entry["seq"]
        prev = digest
    return None
