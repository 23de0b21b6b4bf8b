"""A round's weighted sum kept as contributions arrive, so closing a round does not read them all.

Every strategy weighs a contribution by something of its own — samples, a softmax term of its
perplexity gain, a DP weight — times, for the clustering strategies, whether it is in the chosen
cluster (`Strategy.log_weight`). So the sum the release needs is

    Σ_chosen w_i Δ_i  =  ( Σ_all g_i Δ_i  −  Σ_excluded g_i Δ_i ) / Z,    g_i = exp(log_weight_i − ref)

where Z normalises the weights select() returns. `RunningSum` keeps Σ g_i Δ_i exactly (one
LowRankSum per linear) with `ref` the largest log weight seen: a larger one rescales what is
held, so no exp() ever overflows, whatever the softmax temperature. Sums of several hub replicas
merge by the same rule; a contribution excluded at the close is subtracted.
"""

from __future__ import annotations

import math

import numpy as np

from federation_hub.aggregate.lora import LoraPair, LowRankSum


class RunningSum:
    def __init__(self, shapes: dict[str, tuple[int, int]], ref: float = -math.inf, count: int = 0):
        """`shapes`: linear -> (out, in)."""
        self.shapes = dict(shapes)
        self.ref = ref  # the largest log weight folded in (-inf: nothing with weight yet)
        self.count = count  # contributions folded in, weightless ones included
        self.sums = {name: LowRankSum(out_f, in_f) for name, (out_f, in_f) in self.shapes.items()}

    def add(self, pairs: dict[str, LoraPair], log_weight: float) -> None:
        """Fold in one contribution of unnormalised weight exp(log_weight)."""
        self.count += 1
        if log_weight == -math.inf:
            return
        self._raise_ref(log_weight)
        weight = math.exp(log_weight - self.ref)
        for name, pair in pairs.items():
            self.sums[name].add(pair, weight)

    def make_room(self, log_weights: list[float]) -> None:
        """Raise `ref` to the largest of `log_weights` now, so that adding those contributions
        afterwards rescales nothing: threads can then add different linears side by side
        (`add_linear`), each linear's sum touched by one thread only."""
        finite = [lw for lw in log_weights if lw != -math.inf]
        if finite:
            self._raise_ref(max(finite))

    def add_linear(self, name: str, pair: LoraPair, log_weight: float) -> None:
        """One linear of a contribution whose weight `make_room` has made room for; the caller
        counts the contribution once (`count`)."""
        if log_weight == -math.inf:
            return
        if log_weight > self.ref:
            raise ValueError("add_linear: make_room for this weight first")
        self.sums[name].add(pair, math.exp(log_weight - self.ref))

    def subtract(self, pairs: dict[str, LoraPair], log_weight: float) -> None:
        """Take back a contribution folded in before (one the selection excluded)."""
        if log_weight == -math.inf:
            return
        weight = math.exp(log_weight - self.ref)
        for name, pair in pairs.items():
            self.sums[name].add(pair, -weight)

    def merge(self, other: RunningSum) -> None:
        """Fold in another running sum of the same linears (another replica's); `other` is
        consumed (an empty sum takes its arrays over instead of copying them)."""
        if self.count == 0 and self.ref == -math.inf:
            self.ref, self.count, self.sums = other.ref, other.count, other.sums
            return
        self.count += other.count
        if other.ref == -math.inf:
            return
        self._raise_ref(other.ref)
        weight = math.exp(other.ref - self.ref)
        for name, total in other.sums.items():
            self.sums[name].merge(total, weight)

    def normalized(self, log_norm: float) -> dict[str, LowRankSum]:
        """Σ exp(log_weight_i − log_norm) Δ_i per linear: the sums, scaled in place (the running
        sum is spent)."""
        factor = math.exp(self.ref - log_norm) if self.ref != -math.inf else 0.0
        for total in self.sums.values():
            total.scale(factor)
        return self.sums

    def _raise_ref(self, log_weight: float) -> None:
        if log_weight > self.ref:
            if self.ref != -math.inf:
                factor = math.exp(self.ref - log_weight)
                for total in self.sums.values():
                    total.scale(factor)
            self.ref = log_weight


def log_normalizer(log_weights: np.ndarray, weights: np.ndarray) -> float:
    """log Z such that weights_i = exp(log_weights_i − log Z) over the chosen contributions: the
    normaliser that turns the running sum of exp(log_weight) Δ into select()'s weighted sum."""
    chosen = weights > 0
    lw = log_weights[chosen]
    top = lw.max()
    return float(top + np.log(np.exp(lw - top).sum()) - np.log(weights[chosen].sum()))
