"""Baselines DAF is compared against: FedAvg and FedProx.

FedProx (Li et al., 2020) changes the clients' objective — a proximal term μ/2·||w − w_global||²
keeps local training near the global adapter — and aggregates exactly as FedAvg does; the hub's
part is to hand μ to the clients with the round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federation_hub.aggregate.weights import sample_weights
from federation_hub.strategies.base import (
    ContributionMeta,
    Selection,
    Strategy,
    log_samples,
    require,
    withhold,
)


@dataclass(frozen=True)
class FedAvg(Strategy):
    """McMahan et al. (2017): average weighted by examples trained on."""

    min_contributors: int = 1  # the baseline releases whatever arrived; k-anonymity is enforced on top

    name = "fedavg"

    def __post_init__(self):
        require(self.min_contributors >= 1, f"{self.name}: min_contributors must be at least 1")

    def select(self, metas: list[ContributionMeta], features, rng) -> Selection:
        if len(metas) < self.min_contributors:
            return withhold(len(metas), f"{len(metas)} contributions, fedavg needs {self.min_contributors}")
        return Selection(weights=sample_weights(np.array([m.samples for m in metas])))

    def log_weight(self, meta: ContributionMeta) -> float:
        return log_samples(meta)


@dataclass(frozen=True)
class FedProx(FedAvg):
    proximal_mu: float = 0.01  # the value Li et al. found robust across their benchmarks

    name = "fedprox"

    def __post_init__(self):
        super().__post_init__()
        require(0 <= self.proximal_mu <= 1e3, "fedprox: proximal_mu must be in [0, 1000]")

    def client_config(self) -> dict:
        return {"proximal_mu": self.proximal_mu}


def proximal_gradient(local: np.ndarray, global_: np.ndarray, mu: float) -> np.ndarray:
    """Gradient of FedProx's term μ/2·||local − global||², for a client's training loop to add."""
    return mu * (np.asarray(local) - np.asarray(global_))
