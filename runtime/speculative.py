"""Speculative decoding's accept/reject rule (Leviathan et al. 2023; Chen et al. 2023) over the
graph's per-row candidates: a drafted token x, drawn from the draft distribution q, is kept with
probability min(1, p(x) / q(x)) under the target p; otherwise a replacement is drawn from the
residual norm(max(0, p − q)). The token that comes out is distributed exactly as p, whatever q is
(docs/sampling.md §11). At temperature 0 both are point masses: keep x iff it is p's argmax.

A distribution here is what `choose_token` samples from: the row's candidates (descending, as the
graph returns them) with `candidate_probs`' weights after temperature, top-k and top-p — so p is
the AR model exactly as the runtime samples any row, mass outside the graph's top-K ignored.
Pure standard library; randomness comes in as a `random.Random`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.sampling import candidate_probs, draw, drop_token


@dataclass(frozen=True)
class Candidates:
    """A distribution over token ids: ids[j] has probability probs[j] (probs sum to 1)."""

    ids: tuple[int, ...]
    probs: tuple[float, ...]

    def prob(self, token: int) -> float:
        for i, p in zip(self.ids, self.probs, strict=True):
            if i == token:
                return p
        return 0.0


def row_distribution(
    ids: Sequence[int],
    logits: Sequence[float],
    temperature: float,
    top_k: int,
    top_p: float,
    drop: int | None = None,
) -> Candidates:
    """The distribution `choose_token` samples a row from (`drop`: a token never emitted, the
    drafter's mask token). Temperature must be > 0."""
    if drop is not None:
        ids, logits = drop_token(ids, logits, drop)
    probs = candidate_probs(logits, temperature, top_k, top_p)
    return Candidates(tuple(int(i) for i in ids[: len(probs)]), tuple(probs))


def sample(dist: Candidates, rng: random.Random) -> int:
    """One token from `dist` with one uniform draw (the order `draw` uses)."""
    return dist.ids[draw(dist.probs, rng)]


def acceptance(p: float, q: float) -> float:
    """Probability of keeping a drafted token that the target gives p and the draft gave q > 0."""
    return 1.0 if p >= q else p / q


def residual(target: Candidates, draft: Candidates) -> Candidates:
    """norm(max(0, p − q)) over the target's candidates: what a rejection draws from. It has mass
    whenever a rejection can happen (some x has p(x) < q(x), so Σ max(0, p − q) = Σ max(0, q − p)
    > 0); if rounding leaves none, p itself (then p = q and rejections have probability 0)."""
    weights = [max(0.0, p - draft.prob(i)) for i, p in zip(target.ids, target.probs, strict=True)]
    total = sum(weights)
    if total <= 0.0:
        return target
    return Candidates(target.ids, tuple(w / total for w in weights))


def verify_token(token: int, target: Candidates, draft: Candidates, rng: random.Random) -> tuple[bool, int]:
    """(kept, token out): keep the drafted `token` with probability acceptance(p, q) — one
    uniform draw — or draw its replacement from the residual (a second draw)."""
    q = draft.prob(token)
    if q <= 0.0:
        raise ValueError(f"token {token} was not drafted from this distribution")
    if rng.random() < acceptance(target.prob(token), q):
        return True, token
    return False, sample(residual(target, draft), rng)
