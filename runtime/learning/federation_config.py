"""The `[federation]` section of the learning config: what this device shares with a hub, with
whom, and how it takes back what the hub releases (`ruvdllm federate`, docs/learning.md).

    [federation]
    enabled = true
    hub = "https://hub.example:8700"
    token_file = "~/.config/ruvdllm/hub-token"
    bank = ""                 # the local bank to share and merge into ("": bank/ in the data directory)
    consent_tenant = true     # one switch per tier that can leave the device
    consent_public = false
    consent_group = false
    group = ""                # the group tier's group, and the file with its 32-byte key
    group_key_file = ""

Private is what everything not consented to stays: it has no switch because it never leaves.
Plain data only (standard library); the command that talks to the hub lives above runtime.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ruvdllm.errors import RuvdllmError

SHARED_TIERS = ("group", "tenant", "public")  # the tiers a device may consent to, narrowest first
_POLICY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # the hub's Consent.policy


@dataclass(frozen=True)
class FederationConfig:
    enabled: bool = False  # nothing is sent or merged until the user turns federation on
    hub: str = ""  # the hub's base URL; several replicas comma-separated
    token_file: str = ""  # the client token the hub's admin issued (a file: tokens stay out of configs)
    bank: str = ""  # the bank shared and merged into; "": bank/ in the data directory
    consent_group: bool = False  # share with the group, sealed end to end (the hub sees ciphertext)
    consent_tenant: bool = False  # share with the hub of one's organisation, in plaintext to it
    consent_public: bool = False  # share with everyone, under differential privacy and k-anonymity
    policy: str = "v1"  # the version of the data-sharing policy the consent was given to
    group: str = ""  # the group tier's group name
    group_key_file: str = ""  # the group's shared key (urlsafe base64 of 32 bytes), given out of band
    pull: bool = True  # take the hub's released aggregates into the bank
    merge_weight: float = 0.5  # a release's share when merged: half the device's own, half everyone's
    timeout_s: float = 30.0  # per request: a slow hub fails the step, which is retried later
    retry_min_s: float = 60.0  # first wait after a failure; doubled per failure in a row
    retry_max_s: float = 86400.0  # at most a day between tries (an ε budget renews per period)
    interval_s: float = 3600.0  # `ruvdllm federate --loop`: one step an hour

    def __post_init__(self) -> None:
        if not 0.0 <= self.merge_weight <= 1.0:
            raise RuvdllmError(
                f"learning config: federation.merge_weight {self.merge_weight}: must be in [0, 1]"
            )
        for name in ("timeout_s", "retry_min_s", "retry_max_s", "interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise RuvdllmError(f"learning config: federation.{name} {value}: must be > 0")
        if self.retry_max_s < self.retry_min_s:
            raise RuvdllmError(
                f"learning config: federation.retry_max_s {self.retry_max_s}: below retry_min_s {self.retry_min_s}"
            )
        if not _POLICY.match(self.policy):
            raise RuvdllmError(
                f"learning config: federation.policy {self.policy!r}: 1-64 of A-Z a-z 0-9 _ . : -"
            )

    def consented(self) -> tuple[str, ...]:
        """The tiers the user agreed to share at, narrowest first."""
        return tuple(tier for tier in SHARED_TIERS if getattr(self, f"consent_{tier}"))

    def bank_path(self, data_root: Path) -> Path:
        return Path(self.bank).expanduser() if self.bank else data_root / "bank"
