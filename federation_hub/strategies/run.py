"""Run a strategy over one round: sketch (if the policy clusters), select, sum exactly, finalize,
factorise. Deltas are pulled through `load` in the order asked, so the hub can stream them from
storage in chunks and a group member can feed the ones it decrypted — the same code either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from federation_hub.aggregate.cluster import Sketcher
from federation_hub.aggregate.lora import Factorized, LoraPair, LowRankSum
from federation_hub.strategies.base import ContributionMeta, Selection, Strategy, withhold

Loader = Callable[[Sequence[int]], Iterable[dict[str, LoraPair]]]


@dataclass(frozen=True)
class RoundResult:
    selection: Selection
    factors: dict[str, Factorized] = field(default_factory=dict)  # empty when withheld
    facts: dict = field(default_factory=dict)  # what finalize did (noise scale, …), for the audit log

    @property
    def withheld(self) -> bool:
        return self.selection.withheld


def run_strategy(
    strategy: Strategy,
    metas: list[ContributionMeta],
    load: Loader,
    shapes: dict[str, tuple[int, int]],
    release_ranks: dict[str, int | None],
    rng: np.random.Generator,
    sketch_seed: int,
) -> RoundResult:
    """`shapes` maps each linear to (out, in); a release rank of None keeps the exact numerical rank."""
    if not metas:
        return RoundResult(selection=withhold(0, "no contributions"))
    features = None
    if strategy.needs_features:
        sketcher = Sketcher(shapes, np.random.default_rng(sketch_seed))
        features = np.vstack([sketcher.sketch(strategy.prepare(p)) for p in load(range(len(metas)))])
    selection = strategy.select(metas, features, rng)
    if selection.withheld:
        return RoundResult(selection=selection)
    sums = {name: LowRankSum(out_f, in_f) for name, (out_f, in_f) in shapes.items()}
    chosen = np.flatnonzero(selection.weights)
    for index, pairs in zip(chosen, load([int(i) for i in chosen]), strict=True):
        weight = float(selection.weights[index])
        for name, pair in strategy.prepare(pairs).items():
            sums[name].add(pair, weight)
    return release(strategy, selection, sums, release_ranks, rng)


def release(
    strategy: Strategy,
    selection: Selection,
    sums: dict[str, LowRankSum],
    release_ranks: dict[str, int | None],
    rng: np.random.Generator,
) -> RoundResult:
    """From the exact weighted sums to the released factors: finalize (DP noise), factorise. The
    hub reaches the sums another way (services/rounds.py, from running sums); this step is shared."""
    facts = strategy.finalize(sums, selection, rng)
    factors = {name: total.factorize(release_ranks[name]) for name, total in sums.items()}
    return RoundResult(selection=selection, factors=factors, facts=facts)
