"""Folding contributions into running sums as they arrive, so a close reads a few partial sums
instead of every update again (aggregate/running.py).

Each hub process (every replica) keeps in memory, per open plaintext round that is receiving
updates, the running sum of the contributions it folded: those it accepted, and those another process accepted more than
`fold_adopt_s` ago and never folded (a replica that stopped). Now and then — after
`fold_checkpoint_every` contributions, once the round has been quiet for `fold_idle_s` with
`fold_idle_min` waiting (a burst ended), after `fold_forget_s` of quiet (a trickle), and before a
close — it saves the sum as its partial and marks those contributions folded, in one transaction (dropping their payloads where no close can need them again: strategies that never
exclude anyone). If another process marked one of them first, the transaction rolls back and the
sum is reloaded as last saved.

Nothing depends on this for correctness: a close counts every contribution exactly once from one
snapshot — the saved partials plus the payloads no partial holds (services/rounds.py). Folding
only moves the work from the close to the time in between.

    accepted ──► payload stored ──► folded in memory ──► checkpoint: partial saved + marked folded
                                                          (one transaction)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from federation_hub import codec
from federation_hub.aggregate.running import RunningSum
from federation_hub.services.aggregation import HeldSum, fold_all, strategy_for
from federation_hub.services.state import HubState
from federation_hub.storage.base import ConcurrentWrite, RoundRecord, Viewer, utcnow
from federation_hub.strategies import Strategy

log = logging.getLogger("federation_hub.folding")
ADMIN = Viewer(admin=True)


class _Refused(Exception):
    """The checkpoint must not be written (the round is not open, or another process folded
    some of these contributions first); the transaction rolls back."""


@dataclass
class RoundFold:
    round_: RoundRecord
    strategy: Strategy
    total: RunningSum
    pending: list[int] = field(default_factory=list)  # folded in memory, not yet saved
    last_fold: float = field(default_factory=time.monotonic)

    @property
    def keeps_payloads(self) -> bool:
        """A clustering strategy may exclude a contribution at the close: its payload stays."""
        return self.strategy.needs_features


class Folder:
    def __init__(self, state: HubState):
        self.state = state
        self.owner = state.instance_id
        self.rounds: dict[int, RoundFold] = {}
        self._lock = threading.Lock()  # the loop and a close in this process take turns

    async def run(self) -> None:
        interval = self.state.settings.fold_interval_s
        while True:
            try:
                await asyncio.to_thread(self.step)
            except Exception:  # a failed pass leaves the sums as saved; the next one retries
                log.exception("folding pass failed")
            await asyncio.sleep(interval)

    def step(self) -> int:
        """Fold what waits, save what is due; returns how many contributions were folded."""
        with self._lock:
            folded = self._fold_waiting(None)
            settings = self.state.settings
            now = time.monotonic()
            for round_id, state in list(self.rounds.items()):
                idle = now - state.last_fold
                burst_ended = idle >= settings.fold_idle_s and len(state.pending) >= settings.fold_idle_min
                if len(state.pending) >= settings.fold_checkpoint_every or burst_ended:
                    self._checkpoint(round_id, ("open",))
                elif idle >= settings.fold_forget_s:
                    # a trickle (each save writes the whole dense sum, ~100 MB: not one per update)
                    # or a round saved and quiet: save what waits, give the memory back
                    if state.pending:
                        self._checkpoint(round_id, ("open",))
                    self.rounds.pop(round_id, None)  # reloaded from its partial when needed
            return folded

    def flush(self) -> None:
        """Fold what waits and save every sum with pending contributions now, whatever the
        schedule: for a process about to stop, so a close elsewhere finds its work saved."""
        with self._lock:
            while self._fold_waiting(None):
                pass
            for round_id, state in list(self.rounds.items()):
                if state.pending:
                    self._checkpoint(round_id, ("open",))

    def take(self, round_id: int) -> HeldSum | None:
        """For a close in this process (the round is `closing`): fold what this process still can
        of the round and hand its running sum over — its saved partial plus what is pending —
        rather than writing it out only for the close to read it back."""
        with self._lock:
            while self._fold_waiting(round_id):
                pass
            state = self.rounds.pop(round_id, None)
            return None if state is None else HeldSum(self.owner, state.total, frozenset(state.pending))

    # --- internals ----------------------------------------------------------------------------
    def _fold_waiting(self, round_id: int | None) -> int:
        settings, store = self.state.settings, self.state.store
        adopt_before = utcnow() - timedelta(seconds=settings.fold_adopt_s)
        pending = [cid for state in self.rounds.values() for cid in state.pending]
        waiting = store.unfolded(self.owner, adopt_before, settings.fold_batch, pending, round_id)
        count = 0
        for rid, rows in waiting.items():
            state = self.rounds.get(rid) or self._start(rid)
            if state is None:
                continue
            fold_all(
                state.total,
                state.strategy,
                rows,
                store.payloads([r.id for r in rows]),
                f"round {rid} contribution",
            )
            state.pending.extend(r.id for r in rows)
            count += len(rows)
            self.state.metrics.folded.inc(len(rows))
            state.last_fold = time.monotonic()
        return count

    def _start(self, round_id: int) -> RoundFold | None:
        round_ = self.state.store.get_round(round_id, ADMIN)
        if round_ is None:
            return None
        shapes = {n: (s["out_features"], s["in_features"]) for n, s in round_.shapes.items()}
        saved = self.state.store.partial(round_id, self.owner)
        total = codec.decode_partial(saved, shapes) if saved else RunningSum(shapes)
        state = RoundFold(round_, strategy_for(round_), total)
        self.rounds[round_id] = state
        return state

    def _checkpoint(self, round_id: int, statuses: tuple[str, ...]) -> None:
        state = self.rounds[round_id]
        payload = codec.encode_partial(state.total)
        try:
            with self.state.store.transaction() as tx:
                status = tx.round_status(round_id)
                if status not in statuses:
                    raise _Refused(f"round {round_id} is {status}")
                marked = tx.mark_folded(state.pending, drop_payloads=not state.keeps_payloads)
                if marked != len(state.pending):
                    raise _Refused(f"{len(state.pending) - marked} contributions were folded elsewhere")
                tx.save_partial(round_id, self.owner, state.total.count, payload)
        except (_Refused, ConcurrentWrite) as exc:
            log.info("checkpoint not saved", extra={"round_id": round_id, "why": str(exc)})
            self.state.metrics.partial_saves.labels("refused").inc()
            del self.rounds[round_id]  # as saved: reloaded from the partial if the round is still open
            return
        self.state.metrics.partial_saves.labels("saved").inc()
        state.pending.clear()
