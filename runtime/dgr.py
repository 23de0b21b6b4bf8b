"""DGR: when the model is uncertain about a position, retrieve adapters for it
(docs/sampling.md §8). The math — uncertainty metrics, timestep normalisation, strategies, the
per-step budget and neighbour votes — is pure standard library; the index lives in
runtime/index.py and the per-generation state in runtime/control.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ruvdllm.errors import RuvdllmError

STRATEGIES = ("entropy", "confidence-gap", "hybrid", "adaptive")


@dataclass(frozen=True)
class DgrConfig:
    strategy: str = "hybrid"  # periodic refresh plus spikes: bounded cost, reacts to sudden doubt
    threshold: float = 0.6  # on the normalised score: at t = 1 this is 60% of the maximum entropy
    spike: float = 0.9  # hybrid: off-interval steps retrieve only near-maximal doubt
    interval: int = 4  # hybrid: a full retrieval every 4th step of a span
    target_rate: float = 0.25  # adaptive: aim to retrieve for a quarter of the masked positions
    adapt_rate: float = 0.1  # adaptive: threshold moves 0.1 per unit of rate error per step
    budget: int = 4  # positions retrieved per step: keeps index work O(1) per step
    neighbours: int = 4  # patterns per search
    min_similarity: float = 0.0  # cosine below this is not a match
    vote_temperature: float = 0.1  # softmax over neighbour similarities: the closest dominates
    strength: float = 1.0  # total weight of the retrieved adapters, beside TALoRA's 1
    floor: float = 0.5  # timestep normalisation: the bar at t = 0 is half the bar at t = 1

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise RuvdllmError(
                f"DGR strategy {self.strategy!r}: unknown (choose from {', '.join(STRATEGIES)})"
            )
        if self.budget < 0 or self.neighbours < 1 or self.interval < 1:
            raise RuvdllmError("DGR: budget must be >= 0, neighbours and interval >= 1")
        if not 0.0 < self.floor <= 1.0:
            raise RuvdllmError(f"DGR floor {self.floor}: must be in (0, 1]")


# --- uncertainty metrics, each in [0, 1] ------------------------------------------------------


def normalised_entropy(entropy: float, vocab_size: int) -> float:
    """Entropy in nats as a fraction of the maximum ln(vocab_size)."""
    return min(max(entropy / math.log(vocab_size), 0.0), 1.0)


def confidence_gap(topk_logits: Sequence[float], logsumexp: float) -> float:
    """1 - (p1 - p2): 0 when the top candidate is certain, 1 when the top two tie."""
    p1 = math.exp(topk_logits[0] - logsumexp)
    p2 = math.exp(topk_logits[1] - logsumexp) if len(topk_logits) > 1 else 0.0
    return min(max(1.0 - (p1 - p2), 0.0), 1.0)


def timestep_normalise(uncertainty: float, t: float, floor: float) -> float:
    """Early steps are uncertain by construction, so the bar rises with t:
    score = u / (floor + (1 - floor) t)."""
    return uncertainty / (floor + (1.0 - floor) * t)


def position_score(strategy: str, entropy_u: float, gap_u: float) -> float:
    if strategy == "entropy":
        return entropy_u
    if strategy == "confidence-gap":
        return gap_u
    return (entropy_u + gap_u) / 2  # hybrid and adaptive weigh both metrics


# --- which positions retrieve ------------------------------------------------------------------


def step_bar(config: DgrConfig, step: int, theta: float) -> float:
    """The score a position must exceed at this step of its span."""
    if config.strategy == "hybrid":
        return config.threshold if step % config.interval == 0 else config.spike
    if config.strategy == "adaptive":
        return theta
    return config.threshold


def select_positions(scores: Sequence[tuple[int, float]], bar: float, budget: int) -> list[int]:
    """Positions whose score exceeds `bar`, at most `budget`, most uncertain first (ties: lower
    position)."""
    above = sorted((p for p in scores if p[1] > bar), key=lambda p: (-p[1], p[0]))
    return [position for position, _ in above[:budget]]


def next_theta(config: DgrConfig, theta: float, retrieved: int, candidates: int) -> float:
    """Adaptive: raise the bar when retrieving more than the target rate, lower it when less."""
    if config.strategy != "adaptive" or candidates == 0:
        return theta
    rate = retrieved / candidates
    return min(max(theta + config.adapt_rate * (rate - config.target_rate), 0.0), 2.0)


# --- from neighbours to slot weights -----------------------------------------------------------


def vote(
    neighbours: Sequence[tuple[int, float]], config: DgrConfig, first_slot: int, slots: int
) -> list[float]:
    """DGR slot weights [slots - first_slot] from (slot, similarity) neighbours: a softmax over
    the similarities of those above min_similarity, summed per slot, scaled by strength."""
    weights = [0.0] * (slots - first_slot)
    kept = [(s, sim) for s, sim in neighbours if sim >= config.min_similarity and first_slot <= s < slots]
    if not kept:
        return weights
    top = max(sim for _, sim in kept)
    exps = [(s, math.exp((sim - top) / config.vote_temperature)) for s, sim in kept]
    total = sum(e for _, e in exps)
    for s, e in exps:
        weights[s - first_slot] += config.strength * e / total
    return weights
