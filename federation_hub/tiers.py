"""Privacy tiers, from most to least private (DESIGN.md "Federation").

private  never leaves the device: the client library refuses to send it, and the hub's
         schema has no way to express it
group    sealed end to end with a key the members share; the hub relays ciphertext
tenant   plaintext to the hub, released only to clients of the same organisation
public   differential privacy (clip + noise, ε budget per client) and k-anonymity; released
         to every client and gossiped to peer hubs
"""

from __future__ import annotations

from enum import Enum


class Tier(str, Enum):
    """A str, so it compares equal to, and is stored and sent as, its value ("public")."""

    PRIVATE = "private"
    GROUP = "group"
    TENANT = "tenant"
    PUBLIC = "public"

    def __str__(self) -> str:
        return self.value  # in messages and f-strings, "public" rather than "Tier.PUBLIC"


SENDABLE = (Tier.GROUP, Tier.TENANT, Tier.PUBLIC)  # what may ever cross the network
RELEASED = (Tier.TENANT, Tier.PUBLIC)  # what the hub itself aggregates, releases and may gossip
