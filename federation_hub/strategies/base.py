"""What a strategy is: a policy that picks and weighs contributions. It never touches storage or
HTTP, and leaves the arithmetic to `federation_hub.aggregate`.

A strategy answers four questions for one round of one timestep group:
  log_weight  what one contribution weighs by its own metrics alone (up to a factor shared by all);
  select    which contributions count and how much (weights summing to one, or all zero and a
            reason when nothing may be released) — always proportional to exp(log_weight) over
            the ones it keeps, which is what lets the hub sum as updates arrive
            (aggregate/running.py);
  prepare   how one contribution is transformed before it is summed (identity; DP clips);
  finalize  what is done to the exact sum before it is factorised (nothing; DP adds noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from federation_hub.aggregate.lora import LoraPair, LowRankSum


@dataclass(frozen=True)
class ContributionMeta:
    """What a strategy may know about one contribution without reading its deltas."""

    key: str  # stable id of the contribution (the hub uses the update id)
    client_id: str
    samples: int  # examples the update was trained on
    perplexity_before: float  # on the client's held-out set, before the update
    perplexity_after: float  # … and after


@dataclass(frozen=True)
class Selection:
    weights: np.ndarray  # [n] non-negative; sums to one over the chosen contributions, zeros elsewhere
    reason: str = ""  # why nothing is released, when weights are all zero
    details: dict = field(default_factory=dict)  # e.g. cluster sizes, for the audit log

    @property
    def contributors(self) -> int:
        return int(np.count_nonzero(self.weights))

    @property
    def withheld(self) -> bool:
        return self.contributors == 0


def require(condition: bool, message: str) -> None:
    """Parameter checks in strategies' __post_init__: a bad parameter fails when the round opens,
    not when it closes."""
    if not condition:
        raise ValueError(message)


def log_samples(meta: ContributionMeta) -> float:
    """Weights ∝ examples trained on (sample_weights)."""
    return math.log(meta.samples) if meta.samples > 0 else -math.inf


def log_quality(meta: ContributionMeta, temperature: float) -> float:
    """Weights ∝ exp(relative perplexity gain / temperature), none for no gain (quality_weights)."""
    gain = (meta.perplexity_before - meta.perplexity_after) / meta.perplexity_before
    return gain / temperature if gain > 0 else -math.inf


def withhold(count: int, reason: str, **details) -> Selection:
    return Selection(weights=np.zeros(count), reason=reason, details=details)


class Strategy:
    """Base policy: every contribution counts equally. Subclasses override `select`."""

    name = "uniform"
    needs_features = False  # True: `select` gets one sketch row per contribution
    needs_dense = False  # True: `finalize` needs the dense sum (noise is dense)

    def select(
        self, metas: list[ContributionMeta], features: np.ndarray | None, rng: np.random.Generator
    ) -> Selection:
        return (
            Selection(weights=np.full(len(metas), 1.0 / len(metas)))
            if metas
            else withhold(0, "no contributions")
        )

    def log_weight(self, meta: ContributionMeta) -> float:
        """log of this contribution's unnormalised weight from its own metrics (-inf: none).
        select() keeps some contributions (all, or a cluster) and weighs each kept one
        ∝ exp(log_weight); a strategy without `needs_features` keeps exactly those above -inf."""
        return 0.0

    def own_weight(self, meta: ContributionMeta) -> float:
        """A weight in [0, 1] that depends on this contribution alone (used under differential
        privacy, where weights that depend on other clients would leak their data)."""
        return 1.0

    def prepare(self, pairs: dict[str, LoraPair]) -> dict[str, LoraPair]:
        return pairs

    def finalize(self, sums: dict[str, LowRankSum], selection: Selection, rng: np.random.Generator) -> dict:
        """Post-process the exact sums in place; returns facts for the audit log."""
        return {}

    def client_config(self) -> dict:
        """Settings the clients of a round train with (FedProx's proximal term)."""
        return {}
