"""A plaintext round's result, from one snapshot of the database.

Every contribution is counted exactly once: the snapshot holds each one either in a saved
partial sum (services/folding.py) or as a payload no partial holds, never both and never neither,
whatever other processes fold meanwhile. So a close

    1. reads the contribution rows (metrics, and for clustering strategies the sketch taken on
       arrival) and lets the strategy select and weigh them — no payload read;
    2. merges the partial sums and folds in the payloads they do not hold: Σ_all g_i Δ_i (the
       closing process's own sum comes from memory, when the snapshot agrees with it);
    3. takes back the contributions the selection excluded (clustering), reading only those —
       or sums the chosen ones from their payloads instead, when most were excluded or the
       excluded outweigh the chosen so much that taking them back would cost precision;
    4. normalises to select()'s weights and releases (strategies/run.py `release`).

The result equals `run_strategy` over the same contributions (tests/federation_hub/services/
test_aggregation.py): the same selection, the same sums up to the fold's float32 rounding of each
product (aggregate/lora.py states the bound).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from federation_hub import codec
from federation_hub.aggregate.lora import LoraPair
from federation_hub.aggregate.running import RunningSum, log_normalizer
from federation_hub.errors import Invalid
from federation_hub.privacy.dp import DifferentiallyPrivate
from federation_hub.services.state import HubState
from federation_hub.storage.base import ContributionRow, RoundRecord, Snapshot
from federation_hub.strategies import ContributionMeta, Strategy, make_strategy
from federation_hub.strategies.base import withhold
from federation_hub.strategies.run import RoundResult, release
from federation_hub.tiers import Tier
from ruvdllm.errors import RuvdllmError

log = logging.getLogger("federation_hub.rounds")


def strategy_for(round_: RoundRecord) -> Strategy:
    """The strategy a round runs: its own, wrapped in differential privacy on the public tier."""
    strategy = make_strategy(round_.strategy, round_.timestep_group, round_.strategy_params)
    if round_.tier == Tier.PUBLIC:
        return DifferentiallyPrivate(strategy, **round_.dp)
    return strategy


def contribution_meta(row: ContributionRow) -> ContributionMeta:
    return ContributionMeta(
        row.update_id, row.client_key, row.samples, row.perplexity_before, row.perplexity_after
    )


FOLD_WORKERS = min(os.cpu_count() or 1, 4)
# below this many dense entries over the round's linears a contribution folds in well under a
# millisecond, and handing it between threads would cost more than it saves
THREADED_ENTRIES = 2**20


def fold_all(
    total: RunningSum,
    strategy: Strategy,
    rows: list[ContributionRow],
    payloads: Iterable[bytes],
    what: str,
    workers: int = FOLD_WORKERS,
) -> None:
    """Many stored contributions into a running sum. Payloads are decoded and prepared on this
    thread, a few ahead, never all at once; with several workers, each owns a share of the
    linears and folds those of every contribution straight into `total` (the GEMMs release the
    GIL) — no sum per worker to hold and merge, and each linear sees the contributions in the
    same order whatever the number of workers, so the sum is the same to the bit."""
    log_weights = [strategy.log_weight(contribution_meta(r)) for r in rows]
    total.make_room(log_weights)  # no rescaling while the workers add
    items = (
        (_prepared(strategy, payload, total, f"{what} {row.id}"), lw)
        for row, payload, lw in zip(rows, payloads, log_weights, strict=True)
    )
    if workers <= 1 or len(rows) < 2 * workers or _entries(total.shapes) < THREADED_ENTRIES:
        for pairs, lw in items:
            for name, pair in pairs.items():
                total.add_linear(name, pair, lw)
            total.count += 1
        return
    shares = _shares(total.shapes, workers)
    queues = [queue.Queue(maxsize=4) for _ in shares]
    failures: list[BaseException] = []

    def worker(names: list[str], work: queue.Queue) -> None:
        while (item := work.get()) is not None:
            if not failures:
                try:
                    pairs, lw = item
                    for name in names:
                        total.add_linear(name, pairs[name], lw)
                except BaseException as exc:  # reported on the caller's thread below
                    failures.append(exc)

    threads = [
        threading.Thread(target=worker, args=(names, work), daemon=True)
        for names, work in zip(shares, queues, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        for pairs, lw in items:
            if failures:
                break
            for work in queues:
                work.put((pairs, lw))
            total.count += 1
    finally:
        for work in queues:
            work.put(None)
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]


def _prepared(strategy: Strategy, payload: bytes, total: RunningSum, what: str) -> dict[str, LoraPair]:
    """A stored contribution's factors, as the strategy folds them (DP clips)."""
    pairs = codec.decode_contribution(payload, what)[1]
    if set(pairs) != set(total.shapes):
        raise Invalid(f"{what}: its linears are not the round's")
    return strategy.prepare(pairs)


def _entries(shapes: dict[str, tuple[int, int]]) -> int:
    return sum(out_f * in_f for out_f, in_f in shapes.values())


def _shares(shapes: dict[str, tuple[int, int]], workers: int) -> list[list[str]]:
    """The linears split into `workers` shares of about equal FLOPs (out·in each), largest first."""
    shares: list[list[str]] = [[] for _ in range(min(workers, len(shapes)))]
    loads = [0] * len(shares)
    for name in sorted(shapes, key=lambda n: (-shapes[n][0] * shapes[n][1], n)):
        lightest = loads.index(min(loads))
        shares[lightest].append(name)
        loads[lightest] += shapes[name][0] * shapes[name][1]
    return shares


@dataclass(frozen=True)
class HeldSum:
    """The closing process's own running sum of the round, in memory: its saved partial (of
    `owner`) plus the contributions `pending` it folded since (services/folding.py `take`)."""

    owner: str
    total: RunningSum
    pending: frozenset[int]


def aggregate(
    state: HubState, round_: RoundRecord, strategy: Strategy, held: HeldSum | None = None
) -> tuple[list[ContributionRow], RoundResult]:
    with state.store.reading() as snapshot:
        rows = snapshot.contribution_rows(round_.id)
        return rows, _aggregate(state, round_, strategy, snapshot, rows, held)


def _aggregate(
    state: HubState,
    round_: RoundRecord,
    strategy: Strategy,
    snapshot: Snapshot,
    rows: list[ContributionRow],
    held: HeldSum | None,
) -> RoundResult:
    if not rows:
        return RoundResult(selection=withhold(0, "no contributions"))
    started = time.perf_counter()
    what = f"round {round_.id} contribution"
    metas = [contribution_meta(r) for r in rows]
    features = _features(state, round_, snapshot, rows) if strategy.needs_features else None
    rng = state.child_rng()
    selection = strategy.select(metas, features, rng)
    if selection.withheld:
        return RoundResult(selection=selection)
    log_weights = np.array([strategy.log_weight(m) for m in metas])
    chosen = np.flatnonzero(selection.weights)
    excluded = [i for i in range(len(rows)) if selection.weights[i] == 0 and log_weights[i] > -math.inf]
    shapes = {n: (s["out_features"], s["in_features"]) for n, s in round_.shapes.items()}
    total = RunningSum(shapes)
    if _sum_chosen_directly(log_weights, chosen, excluded):
        picked = [rows[i] for i in chosen]
        fold_all(total, strategy, picked, snapshot.payloads([r.id for r in picked]), what)
        expected = len(chosen)
    else:
        known = {r.id: r for r in rows}
        if held is not None and not all(cid in known and not known[cid].folded for cid in held.pending):
            held = None  # another process folded some of them since: the snapshot alone decides
        if held is not None:  # it stands for its owner's saved partial and its pending rows
            total.merge(held.total)
        for owner, partial in snapshot.partials(round_.id):
            if held is None or owner != held.owner:
                total.merge(codec.decode_partial(partial, shapes))
        loose = [r for r in rows if not r.folded and (held is None or r.id not in held.pending)]
        fold_all(total, strategy, loose, snapshot.payloads([r.id for r in loose]), what)
        for i, payload in zip(excluded, snapshot.payloads([rows[i].id for i in excluded]), strict=True):
            _, pairs, _ = codec.decode_contribution(payload, what)
            total.subtract(strategy.prepare(pairs), float(log_weights[i]))
        expected = len(rows)
    if total.count != expected:  # never release a sum that counts someone twice, or not at all
        raise RuvdllmError(
            f"round {round_.id}: the sums hold {total.count} contributions, not {expected}; nothing released"
        )
    sums = total.normalized(log_normalizer(log_weights, selection.weights))
    ranks = {n: _release_rank(round_.release_rank, s["rank"]) for n, s in round_.shapes.items()}
    summed = time.perf_counter()
    result = release(strategy, selection, sums, ranks, rng)
    log.info(
        "round summed and factorised",
        extra={
            "round_id": round_.id,
            "sum_s": round(summed - started, 3),
            "release_s": round(time.perf_counter() - summed, 3),
        },
    )
    return dataclasses.replace(result, facts={**result.facts, "contributions_summed": total.count})


# Taking back more weight than is kept costs precision in proportion: each product was folded in
# float32 (aggregate/lora.py, ~10⁻⁶ of its size), so past 10× the kept weight the chosen are
# summed from their payloads instead
CANCELLATION = 10.0


def _sum_chosen_directly(log_weights: np.ndarray, chosen: np.ndarray, excluded: list[int]) -> bool:
    if not excluded:
        return False
    if len(excluded) > len(chosen):
        return True  # fewer payloads to read the other way
    with np.errstate(over="ignore"):  # an excluded weight past float range: sum the chosen
        weights = np.exp(log_weights - log_weights[chosen].max())
    return weights[excluded].sum() > CANCELLATION * weights[chosen].sum()


def _features(
    state: HubState, round_: RoundRecord, snapshot: Snapshot, rows: list[ContributionRow]
) -> np.ndarray:
    """One sketch row per contribution: taken on arrival; computed now for any that has none."""
    missing = [i for i, r in enumerate(rows) if r.sketch is None]
    sketches = {
        i: np.frombuffer(r.sketch, dtype=np.float64) for i, r in enumerate(rows) if r.sketch is not None
    }
    if missing:
        sketcher = state.sketcher(round_.id, round_.shapes, round_.sketch_seed)
        for i, payload in zip(missing, snapshot.payloads([rows[i].id for i in missing]), strict=True):
            sketches[i] = sketcher.sketch(
                codec.decode_contribution(payload, f"round {round_.id} contribution")[1]
            )
    return np.vstack([sketches[i] for i in range(len(rows))])


def _release_rank(requested: int | None, contribution_rank: int) -> int | None:
    if requested is None:
        return contribution_rank  # fits the runtime's bank slots, like what was contributed
    return None if requested == 0 else requested  # 0: the exact numerical rank
