"""DAF: diffusion-aware federated aggregation. Each timestep group has its own policy, because
the adapters for different denoising phases differ in how much a bad update hurts:

    coarse  (early, high noise: global structure)   weighted average: plenty of signal, low risk
    domain  (middle: topic and style)                quality-weighted: softmax over perplexity gain
    fine    (late, low noise: exact tokens)          conservative: a minimum of contributors that
                                                     agree (similarity cluster), else nothing

plus `selective` (cluster with k-means / DBSCAN / hierarchical, keep the largest cluster) and
`hybrid` (agreeing cluster, weighted by samples × quality).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from federation_hub.aggregate import cluster
from federation_hub.aggregate.weights import (
    combine,
    quality_weights,
    relative_improvement,
    sample_weights,
)
from federation_hub.strategies.base import (
    ContributionMeta,
    Selection,
    Strategy,
    log_quality,
    log_samples,
    require,
    withhold,
)

# Below this the softmax is an argmax already: a gain gap of 0.001 (a tenth of a percent of
# perplexity, about what a held-out set resolves) weighs e^10 apart. Far below it, gain/temperature
# leaves float range (1e-320 did) and every weight becomes NaN.
MIN_TEMPERATURE = 1e-4


def _samples(metas: list[ContributionMeta]) -> np.ndarray:
    return np.array([m.samples for m in metas], dtype=np.float64)


def _improvement(metas: list[ContributionMeta]) -> np.ndarray:
    return relative_improvement(
        np.array([m.perplexity_before for m in metas]), np.array([m.perplexity_after for m in metas])
    )


def _restrict(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    kept = np.where(mask, weights, 0.0)
    total = kept.sum()
    return kept / total if total > 0 else kept


@dataclass(frozen=True)
class WeightedAverage(Strategy):
    """Coarse group: average weighted by examples."""

    min_contributors: int = (
        1  # coarse structure is safe to release from any number (k-anonymity applies on top)
    )

    name = "weighted"

    def __post_init__(self):
        require(self.min_contributors >= 1, "weighted: min_contributors must be at least 1")

    def select(self, metas, features, rng) -> Selection:
        if len(metas) < self.min_contributors:
            return withhold(len(metas), f"{len(metas)} contributions, need {self.min_contributors}")
        return Selection(weights=sample_weights(_samples(metas)))

    def log_weight(self, meta: ContributionMeta) -> float:
        return log_samples(meta)


@dataclass(frozen=True)
class QualityWeighted(Strategy):
    """Domain group: softmax over relative perplexity improvement; updates that hurt get zero."""

    temperature: float = 0.05  # a 5-point improvement gap multiplies weight by e
    min_contributors: int = 1

    name = "quality"

    def __post_init__(self):
        require(
            MIN_TEMPERATURE <= self.temperature <= 1e3,
            f"quality: temperature must be in [{MIN_TEMPERATURE:g}, 1000]",
        )
        require(self.min_contributors >= 1, "quality: min_contributors must be at least 1")

    def select(self, metas, features, rng) -> Selection:
        weights = quality_weights(_improvement(metas), self.temperature)
        if np.count_nonzero(weights) < self.min_contributors:
            return withhold(
                len(metas),
                f"{np.count_nonzero(weights)} updates improved perplexity, need {self.min_contributors}",
            )
        return Selection(weights=weights)

    def log_weight(self, meta: ContributionMeta) -> float:
        return log_quality(meta, self.temperature)

    def own_weight(self, meta: ContributionMeta) -> float:
        return 1.0 if meta.perplexity_after < meta.perplexity_before else 0.0


@dataclass(frozen=True)
class Conservative(Strategy):
    """Fine group: only a cluster of mutually similar updates (average-linkage, cosine) with at
    least `min_contributors` members is released, weighted by examples."""

    min_contributors: int = 3  # fine details from one or two devices are as likely noise as signal
    max_cosine_distance: float = 0.5  # members agree to cosine similarity ≥ 0.5 on average

    name = "conservative"
    needs_features = True

    def __post_init__(self):
        require(self.min_contributors >= 1, "conservative: min_contributors must be at least 1")
        require(0 < self.max_cosine_distance <= 2, "conservative: max_cosine_distance must be in (0, 2]")

    def select(self, metas, features, rng) -> Selection:
        if len(metas) < self.min_contributors:
            return withhold(len(metas), f"{len(metas)} contributions, fine needs {self.min_contributors}")
        labels = cluster.similarity_clusters(features, self.max_cosine_distance)
        mask = cluster.largest_cluster(labels)
        sizes = np.bincount(labels).tolist()
        if mask.sum() < self.min_contributors:
            return withhold(
                len(metas),
                f"largest agreeing cluster has {int(mask.sum())}, need {self.min_contributors}",
                clusters=sizes,
            )
        return Selection(
            weights=_restrict(sample_weights(_samples(metas)), mask), details={"clusters": sizes}
        )

    def log_weight(self, meta: ContributionMeta) -> float:
        return log_samples(meta)


SELECTIVE_METHODS = ("kmeans", "dbscan", "hierarchical")


@dataclass(frozen=True)
class Selective(Strategy):
    """Cluster the updates and release the largest cluster, weighted by examples."""

    method: str = "kmeans"
    clusters: int = 2  # k-means: expect a majority and a divergent minority
    eps: float = 0.3  # DBSCAN: cosine distance of neighbours
    max_cosine_distance: float = 0.5  # hierarchical: average-linkage cut
    min_contributors: int = 2

    name = "selective"
    needs_features = True

    def __post_init__(self):
        methods = ", ".join(SELECTIVE_METHODS)
        require(
            self.method in SELECTIVE_METHODS,
            f"selective clustering method {self.method!r}: use one of {methods}",
        )
        require(1 <= self.clusters <= 1000, "selective: clusters must be in [1, 1000]")
        require(
            0 < self.eps <= 2 and 0 < self.max_cosine_distance <= 2, "selective: distances must be in (0, 2]"
        )
        require(self.min_contributors >= 1, "selective: min_contributors must be at least 1")

    def labels(self, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.method == "kmeans":
            return cluster.kmeans_clusters(features, self.clusters, rng)
        if self.method == "dbscan":
            return cluster.dbscan_clusters(features, self.eps, min_samples=self.min_contributors)
        return cluster.similarity_clusters(features, self.max_cosine_distance)

    def select(self, metas, features, rng) -> Selection:
        if len(metas) < self.min_contributors:
            return withhold(len(metas), f"{len(metas)} contributions, need {self.min_contributors}")
        labels = self.labels(features, rng)
        mask = cluster.largest_cluster(labels)
        sizes = {int(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True)}
        if mask.sum() < self.min_contributors:
            return withhold(
                len(metas), f"largest {self.method} cluster has {int(mask.sum())}", clusters=sizes
            )
        return Selection(
            weights=_restrict(sample_weights(_samples(metas)), mask), details={"clusters": sizes}
        )

    def log_weight(self, meta: ContributionMeta) -> float:
        return log_samples(meta)


@dataclass(frozen=True)
class Hybrid(Strategy):
    """The agreeing cluster (as `Conservative`), weighted by examples × quality."""

    temperature: float = 0.05
    min_contributors: int = 3
    max_cosine_distance: float = 0.5

    name = "hybrid"
    needs_features = True

    def __post_init__(self):
        require(
            MIN_TEMPERATURE <= self.temperature <= 1e3,
            f"hybrid: temperature must be in [{MIN_TEMPERATURE:g}, 1000]",
        )
        require(self.min_contributors >= 1, "hybrid: min_contributors must be at least 1")
        require(0 < self.max_cosine_distance <= 2, "hybrid: max_cosine_distance must be in (0, 2]")

    def select(self, metas, features, rng) -> Selection:
        base = Conservative(self.min_contributors, self.max_cosine_distance).select(metas, features, rng)
        if base.withheld:
            return base
        weights = combine(base.weights, quality_weights(_improvement(metas), self.temperature))
        if np.count_nonzero(weights) < self.min_contributors:
            return withhold(len(metas), "too few improving updates in the agreeing cluster", **base.details)
        return Selection(weights=weights, details=base.details)

    def log_weight(self, meta: ContributionMeta) -> float:
        return log_samples(meta) + log_quality(meta, self.temperature)

    def own_weight(self, meta: ContributionMeta) -> float:
        return 1.0 if meta.perplexity_after < meta.perplexity_before else 0.0


# DAF's default policy per timestep group (DESIGN.md "Federation").
DAF_POLICIES: dict[str, type[Strategy]] = {
    "coarse": WeightedAverage,
    "domain": QualityWeighted,
    "fine": Conservative,
}


def daf_for_group(timestep_group: str, **params) -> Strategy:
    """DAF's strategy for one timestep group; unknown group names are rejected."""
    try:
        policy = DAF_POLICIES[timestep_group]
    except KeyError:
        raise ValueError(
            f"daf has no policy for timestep group {timestep_group!r} (known: {', '.join(DAF_POLICIES)}); name a strategy"
        ) from None
    return policy(**params)
