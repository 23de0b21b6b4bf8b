"""Differential privacy for public-tier rounds: clip every update, add Gaussian noise to the sum.

This is DP-FedAvg (McMahan et al., 2018) with fixed clipping: each client's whole update (all
linears' deltas as one vector) is scaled to Frobenius norm ≤ C, so one client changes the sum of
clipped updates by at most C; Gaussian noise of standard deviation σ·C on that sum gives the
Gaussian mechanism with noise multiplier σ, which `privacy.accountant` turns into (ε, δ).

Weights that depend on other clients (softmax over everyone's improvement, similarity clusters)
would leak those clients' metrics through the choice itself, so under DP the wrapped strategy only
contributes `own_weight` — a weight in [0, 1] from the contribution's own metrics — and the sum is
divided by the number of contributors, which the release publishes anyway. Noise is added to the
dense sum (it has no low-rank structure) before the release is factorised: post-processing keeps
the guarantee.

The generator is passed in (seeded from the OS by the hub). NumPy's PCG64 is not a cryptographic
source; like Flower and Opacus's default, this accepts that for simulation-grade noise and says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from federation_hub.aggregate.lora import LoraPair, LowRankSum, scale_pair, update_norm
from federation_hub.strategies.base import ContributionMeta, Selection, Strategy, withhold


def clip_update(pairs: dict[str, LoraPair], clip_norm: float) -> tuple[dict[str, LoraPair], float]:
    """Scale the whole update to norm ≤ clip_norm; returns the clipped update and its old norm."""
    norm = update_norm(pairs)
    if norm <= clip_norm or norm == 0.0:
        return pairs, norm
    factor = clip_norm / norm
    return {name: scale_pair(pair, factor) for name, pair in pairs.items()}, norm


def gaussian_noise(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, std, size=shape)


@dataclass(frozen=True)
class DifferentiallyPrivate(Strategy):
    """Wraps a strategy: clipping + Gaussian noise, weights from each contribution alone."""

    inner: Strategy
    clip_norm: float = 1.0  # C: a LoRA delta's norm is O(1) with the usual init and learning rates
    noise_multiplier: float = 8.0  # σ: three public rounds per client fit in ε = 1 at δ = 1e-5 (RDP)

    needs_dense = True

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"dp({self.inner.name})"

    def select(self, metas: list[ContributionMeta], features, rng) -> Selection:
        own = np.array([min(max(self.inner.own_weight(m), 0.0), 1.0) for m in metas])
        count = int(np.count_nonzero(own))
        if count == 0:
            return withhold(len(metas), "no contribution qualifies")
        # Σ own_i · clip(Δ_i) / count: each client moves the sum by ≤ C, the mean by ≤ C / count
        return Selection(weights=own / count)

    def log_weight(self, meta: ContributionMeta) -> float:
        own = min(max(self.inner.own_weight(meta), 0.0), 1.0)
        return math.log(own) if own > 0 else -math.inf

    def prepare(self, pairs: dict[str, LoraPair]) -> dict[str, LoraPair]:
        return clip_update(pairs, self.clip_norm)[0]

    def finalize(self, sums: dict[str, LowRankSum], selection: Selection, rng: np.random.Generator) -> dict:
        std = self.noise_multiplier * self.clip_norm * float(selection.weights.max())
        for name in sorted(sums):  # sorted: same seed, same noise
            total = sums[name]
            total.add_dense(gaussian_noise((total.out_features, total.in_features), std, rng))
        return {"clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier, "noise_std": std}
