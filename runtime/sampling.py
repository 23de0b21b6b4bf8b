"""Choosing one token from a row's candidates: temperature, top-k, top-p over the graph's top-K
list, and the confidence used for remasking (docs/sampling.md §4-5). Pure standard library;
randomness comes in as a `random.Random`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def drop_token(ids: Sequence[int], logits: Sequence[float], token: int) -> tuple[list[int], list[float]]:
    """The candidates without `token` (the mask token is never emitted)."""
    kept = [(i, x) for i, x in zip(ids, logits, strict=True) if i != token]
    return [i for i, _ in kept], [x for _, x in kept]


def candidate_probs(logits: Sequence[float], temperature: float, top_k: int, top_p: float) -> list[float]:
    """Probabilities over the leading candidates after temperature, top-k and top-p (in that
    order); the list is as long as the candidates kept. `logits` must be descending."""
    kept = list(logits[:top_k]) if top_k > 0 else list(logits)
    best = kept[0]
    weights = [math.exp((x - best) / temperature) for x in kept]
    total = sum(weights)
    probs = [w / total for w in weights]
    return nucleus(probs, top_p)


def nucleus(probs: Sequence[float], top_p: float) -> list[float]:
    """The smallest prefix of descending `probs` whose mass is >= top_p (at least one entry),
    renormalised."""
    if top_p >= 1.0:
        return list(probs)
    cumulative = 0.0
    cut = len(probs)
    for j, p in enumerate(probs):
        cumulative += p
        if cumulative >= top_p:
            cut = j + 1
            break
    kept = probs[:cut]
    total = sum(kept)
    return [p / total for p in kept]


def draw(probs: Sequence[float], rng: random.Random) -> int:
    """Index j of the first cumulative probability above one uniform draw."""
    u = rng.random()
    cumulative = 0.0
    for j, p in enumerate(probs):
        cumulative += p
        if u < cumulative:
            return j
    return len(probs) - 1  # rounding left the total a hair below u


def choose_token(
    ids: Sequence[int],
    logits: Sequence[float],
    temperature: float,
    top_k: int,
    top_p: float,
    rng: random.Random,
) -> int:
    """Index into the candidates of the chosen one. Greedy at temperature 0 (no draw from rng)."""
    if not ids:
        raise ValueError("no candidates to choose from")
    if temperature <= 0.0:
        return 0
    return draw(candidate_probs(logits, temperature, top_k, top_p), rng)


def confidence(logit: float, logsumexp: float) -> float:
    """Temperature-1 probability of a token under the full vocabulary."""
    return math.exp(logit - logsumexp)
