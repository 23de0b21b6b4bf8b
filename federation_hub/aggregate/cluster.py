"""Similarity between updates and clustering of them (scikit-learn / scipy, not hand-written).

Comparing two deltas exactly needs their full products; instead each update is sketched by a
two-sided random projection per linear, `Ψᵀ (B A) Ω = (Ψᵀ B)(A Ω)` with Gaussian Ψ [out, s],
Ω [in, s] of variance 1/s: inner products (hence cosine similarity) are preserved in
expectation (Johnson–Lindenstrauss), at s² numbers per linear instead of out·in. The
projections come from a generator passed in, so every hub and every member of a group that
sketches the same round with the same seed gets the same features.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from federation_hub.aggregate.lora import LoraPair

SKETCH_SIZE = 8  # s: 64 numbers per linear, 3,840 for 30 layers × 2 targets; enough to separate directions


class Sketcher:
    """Fixed random projections for a round's linears; `sketch(update)` → one feature row."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rng: np.random.Generator, size: int = SKETCH_SIZE):
        self.names = sorted(shapes)
        self.projections = {}
        for name in self.names:  # sorted: the same seed gives the same projections everywhere
            out_features, in_features = shapes[name]
            psi = rng.standard_normal((out_features, size)) / np.sqrt(size)
            omega = rng.standard_normal((in_features, size)) / np.sqrt(size)
            self.projections[name] = (psi, omega)

    def sketch(self, pairs: dict[str, LoraPair]) -> np.ndarray:
        parts = []
        for name in self.names:
            psi, omega = self.projections[name]
            pair = pairs[name]
            parts.append(((psi.T @ pair.b.astype(np.float64)) @ (pair.a.astype(np.float64) @ omega)).ravel())
        return np.concatenate(parts)


def unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


def similarity_clusters(features: np.ndarray, max_cosine_distance: float) -> np.ndarray:
    """Average-linkage hierarchical clusters whose members are within `max_cosine_distance`
    (1 − cosine similarity) on average. Labels are 0-based."""
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(features) == 1:
        return np.zeros(1, dtype=int)
    tree = linkage(unit_rows(features), method="average", metric="cosine")
    return fcluster(tree, t=max_cosine_distance, criterion="distance") - 1


def kmeans_clusters(features: np.ndarray, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means on unit rows (spherical k-means: clusters by direction, not by size)."""
    from sklearn.cluster import KMeans

    rows = unit_rows(features)
    distinct = len(np.unique(rows.round(9), axis=0))
    clusters = max(1, min(clusters, distinct))  # identical updates form one cluster, not an error
    seed = int(rng.integers(0, 2**31 - 1))
    return KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit_predict(rows)


def dbscan_clusters(features: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN with cosine distance; label −1 marks outliers that belong to no cluster."""
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit_predict(unit_rows(features))


def largest_cluster(labels: Iterable[int]) -> np.ndarray:
    """Boolean mask of the most populated cluster (outliers, label −1, never count); ties go to
    the lowest label so the choice is deterministic."""
    labels = np.asarray(list(labels))
    valid = labels[labels >= 0]
    if valid.size == 0:
        return np.zeros(labels.shape, dtype=bool)
    values, counts = np.unique(valid, return_counts=True)
    return labels == values[np.argmax(counts)]
