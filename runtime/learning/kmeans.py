"""Spherical k-means over prompt embeddings (numpy only: scikit-learn is not in Pyodide).

The embeddings are DGR query vectors, L2-normalised hidden states, and retrieval compares them by
cosine similarity; so does this clustering: points and centroids live on the unit sphere, each
point joins the centroid of highest dot product, and a centroid is the normalised mean of its
points. A cluster's centroid is then directly a DGR key (runtime/index.py normalises keys anyway).

k-means++ seeding (Arthur & Vassilvitskii 2007) with distance 1 - cosine; `rng` is an argument,
so the same embeddings and seed give the same clusters.
"""

from __future__ import annotations

import numpy as np


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def kmeans_pp(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k initial centroids [k, d] chosen among unit `points` [n, d], far apart (k <= n)."""
    n = points.shape[0]
    chosen = [int(rng.integers(n))]
    distance = 1.0 - points @ points[chosen[0]]  # [n] to the nearest chosen centroid
    for _ in range(1, k):
        weights = np.maximum(distance, 0.0)
        total = weights.sum()
        pick = int(rng.choice(n, p=weights / total)) if total > 1e-12 else int(rng.integers(n))
        chosen.append(pick)
        distance = np.minimum(distance, 1.0 - points @ points[pick])
    return points[chosen].copy()


def spherical_kmeans(
    embeddings: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [k', d], labels [n]) of `embeddings` [n, d]; k' = min(k, n). Centroids are unit
    vectors; labels index them. Stops when no label changes."""
    points = normalise_rows(np.asarray(embeddings, np.float64))
    k = max(1, min(k, points.shape[0]))
    centroids = kmeans_pp(points, k, rng)
    labels = np.full(points.shape[0], -1)
    for _ in range(iterations):
        new = np.argmax(points @ centroids.T, axis=1)  # nearest by cosine; ties: lower index
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = points[labels == c]
            if len(members):  # an emptied cluster keeps its centroid (it may win points back)
                centroids[c] = members.sum(axis=0)
        centroids = normalise_rows(centroids)
    return centroids, labels


def cohesion(embeddings: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum over points of the cosine to their centroid (what spherical k-means increases)."""
    points = normalise_rows(np.asarray(embeddings, np.float64))
    return float(np.sum(np.einsum("nd,nd->n", points, centroids[labels])))
