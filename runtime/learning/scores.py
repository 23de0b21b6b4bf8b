"""How useful each DGR pattern has been: feedback on answers moves the scores of the patterns those
answers retrieved, and retrieval re-ranks near neighbours by them.

A pattern's usefulness u is an exponential moving average of the feedback values (in [-1, 1],
trajectory.feedback_value) of the answers that used it, starting at 0 (no evidence):

    u <- (1 - rate) * u + rate * value

so u stays in [-1, 1], moves toward each new value, and converges to a repeated one. Retrieval
ranks neighbours by similarity + weight * u and drops those with u <= floor. With no feedback at
all nothing changes: `active()` is false and the control searches exactly as before.

Saved beside the bank as `pattern_scores.json`, written to a temporary file and renamed over the
old one: a crash mid-save leaves the previous scores. Pattern ids are the bank's insertion order
(runtime/banks.py), which adding patterns never changes; ids beyond the bank's count are ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from runtime.learning.store import move_aside, warn

SCORES_NAME = "pattern_scores.json"
SCORES_FORMAT = 1


def ema(score: float, value: float, rate: float) -> float:
    """One feedback value folded into a usefulness score."""
    return (1.0 - rate) * score + rate * value


def rerank(
    found: Sequence[tuple[int, int, float]], usefulness: dict[int, float], weight: float, floor: float, k: int
) -> list[tuple[int, int, float]]:
    """The k best of (pattern, slot, similarity) neighbours by similarity + weight · usefulness,
    without those whose usefulness is at or below `floor`; similarities are returned adjusted (DGR's
    vote weighs by them). The sort is stable: equal adjusted similarities keep the search's order."""
    kept = [
        (pattern, slot, sim + weight * usefulness.get(pattern, 0.0))
        for pattern, slot, sim in found
        if usefulness.get(pattern, 0.0) > floor
    ]
    kept.sort(key=lambda n: -n[2])
    return kept[:k]


class PatternScores:
    """The usefulness of one bank's patterns; shared by the models that serve the bank and
    updated by the feedback path (a lock keeps concurrent updates whole)."""

    def __init__(
        self,
        path: Path | None,
        patterns: int,
        rate: float = 0.2,
        weight: float = 0.05,
        floor: float = -0.5,
        extra: int = 4,
    ):
        self.path = path  # None: kept in memory only
        self.patterns = patterns
        self.rate, self.weight, self.floor, self.extra = rate, weight, floor, extra
        self.usefulness: dict[int, float] = {}
        self.counts: dict[int, int] = {}
        self._lock = threading.Lock()

    # --- what retrieval uses (runtime/control.py) -------------------------------------------------

    def active(self) -> bool:
        return bool(self.usefulness)

    def rerank(self, found: Sequence[tuple[int, int, float]], k: int) -> list[tuple[int, int, float]]:
        return rerank(found, self.usefulness, self.weight, self.floor, k)

    # --- what feedback does ----------------------------------------------------------------------

    def update(self, patterns: Iterable[int], value: float) -> list[int]:
        """Fold `value` into each pattern's score; returns the patterns updated (those the bank has)."""
        updated = []
        with self._lock:
            for pattern in sorted(set(patterns)):
                if 0 <= pattern < self.patterns:
                    self.usefulness[pattern] = ema(self.usefulness.get(pattern, 0.0), value, self.rate)
                    self.counts[pattern] = self.counts.get(pattern, 0) + 1
                    updated.append(pattern)
        return updated

    # --- persistence ------------------------------------------------------------------------------

    def save(self) -> None:
        """Write the scores atomically (temporary file in the same directory, then rename)."""
        if self.path is None:
            return
        with self._lock:
            body = {
                "format": SCORES_FORMAT,
                "patterns": self.patterns,
                "scores": {str(p): [u, self.counts.get(p, 0)] for p, u in sorted(self.usefulness.items())},
            }
        fd, temporary = tempfile.mkstemp(prefix=f".{SCORES_NAME}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(body, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(
        cls, bank_dir: Path, patterns: int, on_warning: Callable[[str], None] = warn, **knobs
    ) -> PatternScores:
        """The scores saved beside the bank in `bank_dir` (none saved: all zero). A file that
        cannot be read is moved aside with a one-line warning and the scores start afresh."""
        path = Path(bank_dir) / SCORES_NAME
        scores = cls(path, patterns, **knobs)
        if not path.is_file():
            return scores
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            if body.get("format") != SCORES_FORMAT:
                raise ValueError(f"format {body.get('format')!r} is not {SCORES_FORMAT}")
            for key, (u, count) in body["scores"].items():
                pattern, u = int(key), float(u)
                if 0 <= pattern < patterns and -1.0 <= u <= 1.0:
                    scores.usefulness[pattern] = u
                    scores.counts[pattern] = int(count)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            scores.usefulness.clear()
            scores.counts.clear()
            move_aside(path, f"unreadable pattern scores ({type(exc).__name__}: {exc})", on_warning)
        return scores
