"""Loop A wired together for the commands and the server: record every request, take feedback
on a completion id, move the usefulness of the patterns that answer used.

    loop = LoopA.from_config(load_learning_config(path))   # None when loop A is off
    loop.attach(model)                    # retrieval uses the bank's learnt scores
    control = model.control(settings)     # keeps the prompt embedding and each step's patterns
    done = model.generate(ids, settings, control=control)
    completion_id = loop.record_completion(model, ids, settings, done, control)
    loop.feedback(make_feedback(completion_id, up=True))
    loop.close()                          # or at exit: everything queued is written
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.learning.config import LearningConfig, LoopAConfig
from runtime.learning.recorder import Recorder
from runtime.learning.scores import PatternScores
from runtime.learning.store import TrajectoryStore, warn
from runtime.learning.trajectory import Feedback, Pending, new_completion_id
from runtime.settings import GenerationSettings
from ruvdllm.errors import RuvdllmError


def sqlite_store(path: Path, on_warning: Callable[[str], None]) -> TrajectoryStore:
    """The CPython store; imported on first use so that a browser, passing its own `open_store`,
    never imports sqlite3."""
    from runtime.learning.sqlite_store import SqliteStore

    return SqliteStore(path, on_warning)


class UnknownCompletion(RuvdllmError):
    """Feedback for a completion id the store has no trajectory for."""


@dataclass(frozen=True)
class FeedbackResult:
    completion_id: str
    kind: str
    value: float  # the feedback as a number in [-1, 1]
    patterns: list[int]  # DGR patterns whose usefulness it moved


def bank_pattern_count(bank_dir: Path) -> int:
    """How many patterns the bank in `bank_dir` holds (from bank.json alone)."""
    from runtime.banks import BANK_JSON

    try:
        return int(json.loads((Path(bank_dir) / BANK_JSON).read_text())["patterns"]["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


class LoopA:
    def __init__(
        self,
        config: LoopAConfig | None = None,
        threaded: bool = True,
        on_warning: Callable[[str], None] = warn,
        open_store: Callable[[], TrajectoryStore] | None = None,
    ):
        config = config or LoopAConfig()
        self.config = config
        self.on_warning = on_warning
        path = config.store_path()
        self.store_path = path
        self.recorder = Recorder(
            open_store or (lambda: sqlite_store(path, on_warning)), config.queue_size, threaded, on_warning
        )
        self._scores: dict[str, PatternScores] = {}
        self._names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (name, bank)

    @classmethod
    def from_config(cls, config: LearningConfig, **kwargs) -> LoopA | None:
        return cls(config.loop_a, **kwargs) if config.loop_a.enabled else None

    # --- models ----------------------------------------------------------------------------------

    def scores_for(self, bank_dir: Path, patterns: int | None = None) -> PatternScores:
        """The one PatternScores of the bank in `bank_dir` (loaded on first use)."""
        key = str(Path(bank_dir).resolve())
        scores = self._scores.get(key)
        if scores is None:
            count = bank_pattern_count(Path(key)) if patterns is None else patterns
            c = self.config
            scores = PatternScores.load(
                Path(key),
                count,
                self.on_warning,
                rate=c.score_rate,
                weight=c.score_weight,
                floor=c.score_floor,
                extra=c.score_extra,
            )
            self._scores[key] = scores
        return scores

    def attach(self, model) -> None:
        """Let `model` retrieve with its bank's learnt scores and keep prompt embeddings."""
        model.record_query = True
        self._names[model] = self._name_of(model)  # once, not per request
        if model.bank is not None and model.bank_dir is not None and model.bank.pattern_slots:
            model.scores = self.scores_for(model.bank_dir, len(model.bank.pattern_slots))

    @staticmethod
    def _name_of(model) -> tuple[str, str | None]:
        return Path(model.directory).name, str(model.bank_dir) if model.bank_dir is not None else None

    # --- recording (the request path: only builds a Pending and enqueues it) ------------------

    def record(
        self,
        model,
        prompt_tokens: Sequence[int],
        settings: GenerationSettings,
        trace: Sequence,
        control,
        answer: str,
        answer_tokens: Sequence[int],
        finish_reason: str,
        wall_ms: float,
        model_name: str | None = None,
        prompt: str | None = None,
        completion_id: str | None = None,
    ) -> str:
        """Queue one finished request; returns its completion id (`completion_id` when given)."""
        completion_id = completion_id or new_completion_id()
        name, bank = self._names.get(model) or self._name_of(model)
        self.recorder.record(
            Pending(
                completion_id,
                time.time(),
                model_name or name,
                bank,
                prompt_tokens,
                settings,
                trace,
                answer,
                answer_tokens,
                finish_reason,
                wall_ms,
                prompt,
                model.decode,
                getattr(control, "embedding", None),
                getattr(control, "talora", None),
            )
        )
        return completion_id

    def record_completion(self, model, prompt_tokens, settings, done, control, **kwargs) -> str:
        """`record` for a runtime.model.Completion."""
        result = done.result
        return self.record(
            model,
            prompt_tokens,
            settings,
            result.trace,
            control,
            done.text,
            done.tokens,
            done.finish_reason,
            result.wall_ms,
            **kwargs,
        )

    # --- feedback -------------------------------------------------------------------------------

    def feedback(self, feedback: Feedback) -> FeedbackResult:
        """Store the feedback beside its trajectory and move the scores of the patterns that
        answer used. Raises UnknownCompletion for an id the store does not hold."""

        def apply(store: TrajectoryStore):
            trajectory = store.trajectory(feedback.completion_id)
            if trajectory is None:
                raise UnknownCompletion(
                    f"completion id {feedback.completion_id!r}: no such completion recorded"
                )
            store.add_feedback(feedback)
            return trajectory.bank, trajectory.patterns

        bank, patterns = self.recorder.call(apply)
        updated: list[int] = []
        if bank is not None and patterns and Path(bank).is_dir():
            scores = self.scores_for(Path(bank))
            updated = scores.update(patterns, feedback.value)
            try:
                scores.save()
            except OSError as exc:
                self.on_warning(f"{scores.path}: pattern scores not saved ({exc.strerror or exc})")
        return FeedbackResult(feedback.completion_id, feedback.kind, feedback.value, updated)

    def close(self) -> None:
        self.recorder.close()

    def __enter__(self) -> LoopA:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
