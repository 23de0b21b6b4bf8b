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
    PRIVATE = "private"
    GROUP = "group"
    TENANT = "tenant"
    PUBLIC = "public"


SENDABLE = (Tier.GROUP, Tier.TENANT, Tier.PUBLIC)  # what may ever cross the network
