"""Contribution weights: pure functions from per-update metrics to non-negative weights that sum
to one (or to all zeros when nothing qualifies)."""

from __future__ import annotations

import numpy as np


def normalize(weights: np.ndarray) -> np.ndarray:
    """Scale to sum one; all-zero stays all-zero (the caller then releases nothing)."""
    weights = np.asarray(weights, dtype=np.float64)
    total = weights.sum()
    return weights / total if total > 0 else np.zeros_like(weights)


def sample_weights(samples: np.ndarray) -> np.ndarray:
    """FedAvg / DAF coarse: each update weighs by the number of examples it was trained on."""
    return normalize(np.maximum(np.asarray(samples, dtype=np.float64), 0.0))


def relative_improvement(perplexity_before: np.ndarray, perplexity_after: np.ndarray) -> np.ndarray:
    """(before − after) / before: 0.1 means the update cut validation perplexity by 10%.
    Relative, so clients whose held-out sets differ in difficulty are comparable."""
    before = np.asarray(perplexity_before, dtype=np.float64)
    after = np.asarray(perplexity_after, dtype=np.float64)
    return (before - after) / before


def quality_weights(improvement: np.ndarray, temperature: float) -> np.ndarray:
    """DAF domain: softmax over perplexity improvement. Updates that made perplexity worse
    (improvement ≤ 0) get weight zero: averaging a harmful delta in only dilutes the good ones."""
    improvement = np.asarray(improvement, dtype=np.float64)
    helpful = improvement > 0
    if not helpful.any():
        return np.zeros_like(improvement)
    # stable softmax: the best gain subtracted before dividing, so no logit exceeds 0 and none
    # overflows, whatever the temperature (strategies bound it: daf.MIN_TEMPERATURE)
    best = improvement[helpful].max()
    with np.errstate(over="ignore"):  # a gap past float range at a tiny temperature: weight 0
        logits = np.where(helpful, (improvement - best) / temperature, -np.inf)
    return normalize(np.exp(logits))


def combine(*weights: np.ndarray) -> np.ndarray:
    """Product of weightings (hybrid: samples × quality), renormalised."""
    out = np.ones_like(np.asarray(weights[0], dtype=np.float64))
    for w in weights:
        out = out * np.asarray(w, dtype=np.float64)
    return normalize(out)
