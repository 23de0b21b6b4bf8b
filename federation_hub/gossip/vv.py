"""Version vectors over released aggregates.

Every release is identified by (origin hub, seq), seq counting 1, 2, … at its origin, and is
immutable. A hub's version vector maps each origin to the highest n such that it holds 1..n of
that origin's releases: everything above may be missing, so a peer sends everything above it.
The state being merged is a set of immutable entries keyed by (origin, seq) — a grow-only set —
so merging is set union: idempotent, commutative and associative, and hubs that keep exchanging
converge whatever the order, duplication or delay of the messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def contiguous(seqs: Iterable[int]) -> int:
    """Highest n such that 1..n are all present."""
    held = set(seqs)
    n = 0
    while n + 1 in held:
        n += 1
    return n


def version_vector(held: Mapping[str, Iterable[int]]) -> dict[str, int]:
    return {origin: contiguous(seqs) for origin, seqs in held.items() if contiguous(seqs) > 0}


def merge(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    """Pointwise maximum."""
    return {origin: max(a.get(origin, 0), b.get(origin, 0)) for origin in set(a) | set(b)}


def dominates(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    """a has seen everything b has."""
    return all(a.get(origin, 0) >= n for origin, n in b.items())


def missing(held: Mapping[str, Iterable[int]], peer: Mapping[str, int]) -> list[tuple[str, int]]:
    """Entries we hold that a peer at version vector `peer` may lack."""
    return sorted((origin, s) for origin, seqs in held.items() for s in seqs if s > peer.get(origin, 0))


def union(a: Mapping[tuple[str, int], str], b: Mapping[tuple[str, int], str]) -> dict[tuple[str, int], str]:
    """Merge two sets of entries (key -> digest). Keys are immutable at their origin; if two
    digests ever differ (an origin that lost its database and reused its id), the smaller digest
    wins so the result still does not depend on the order of merging."""
    merged = dict(a)
    for key, digest in b.items():
        merged[key] = min(digest, merged.get(key, digest))
    return merged
