"""Hub settings: one frozen dataclass, built by `command.py` from the command line."""

from __future__ import annotations

from dataclasses import dataclass

from federation_hub.privacy.kanon import K_ANONYMITY
from federation_hub.tiers import Tier


@dataclass(frozen=True)
class HubSettings:
    database_url: str  # sqlite:///PATH (default, WAL) or postgresql://… for replicas sharing state
    admin_token_hash: str  # sha256 of the admin token; the token itself is never kept
    hub_id: str | None = None  # None: generated on first start and kept in the database
    peers: tuple[str, ...] = ()  # base URLs of peer hubs to gossip with
    gossip_secret: bytes | None = None  # HMAC key shared by the federation; None disables gossip
    gossip_interval_s: float = 10.0  # anti-entropy period: releases are rare, a few seconds of lag is fine
    gossip_tiers: tuple[Tier, ...] = (Tier.PUBLIC,)  # tenant releases stay on this hub unless asked
    # a rank-8, 32-layer 4096-wide update for 3 groups is ~55 MiB in base64
    max_request_bytes: int = 64 * 2**20
    epsilon_budget: float = 1.0  # DESIGN.md: ε = 1.0 per client per period
    delta: float = 1e-5  # below 1/population for any federation this hub will serve
    budget_period_s: int = 30 * 86400  # the budget renews monthly
    k_anonymity: int = K_ANONYMITY  # nothing released from fewer distinct contributors (public tier)
    default_clip_norm: float = 1.0  # public rounds that name no DP parameters get these
    default_noise_multiplier: float = 8.0  # three public contributions per client and period fit in ε = 1
    dp_seed: int | None = None  # None: noise from OS entropy; an int makes releases reproducible (tests)
    # folding contributions into running sums as they arrive (services/folding.py)
    fold_interval_s: float = 0.2  # how often the folder looks for new contributions
    fold_batch: int = 64  # contributions read per look: ~110 MB of rank-8 updates for 60 linears
    fold_checkpoint_every: int = 1024  # save the running sum at least this often (a dense one is big)
    fold_idle_s: float = 1.0  # …and once a round has had nothing new for this long (a burst ended)
    fold_idle_min: int = 32  # …with at least this many waiting: a trickle must not save ~100 MB per update
    fold_forget_s: float = 30.0  # quiet this long: save what waits, then free the sum's memory
    # fold what another process accepted this long ago and never folded: meant for a replica that
    # stopped, so well past a live one's own save of a trickle at fold_forget_s (at equal values
    # the two raced, and the live replica's sum was thrown away)
    fold_adopt_s: float = 120.0
    log_level: str = "info"
