"""What one request leaves behind for the learning loops, and feedback as a number.

The caller's side only builds a `Pending` (references to what generation already made: the
settings, the StepEvent trace, the answer) and hands it to the recorder; turning it into a stored
row — decoding, per-step summaries, TALoRA weights, JSON — happens on the writer's side, off the
request path. Everything here is pure.
"""

from __future__ import annotations

import itertools
import math
import os
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

from runtime.settings import GenerationSettings
from runtime.talora import TaloraConfig, talora_weights
from ruvdllm.errors import RuvdllmError

RATING_RANGE = (1.0, 5.0)  # a rating is 1..5 (stars); 3 is neutral
FEEDBACK_KINDS = ("rating", "up", "down", "correction")
CORRECTION_VALUE = -0.5  # a corrected answer was wrong, but often only in part


# A random 64-bit prefix per process and a counter: unique across processes and restarts like a
# uuid4, but without a system call per request (os.urandom, which uuid4 calls, is a point where a
# loaded machine's scheduler may preempt the caller: measured ~30 us there instead of ~3 us).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_completion_id(prefix: str = "cmpl") -> str:
    """A stable id for one completion, shaped like the server's OpenAI-style ids (32 hex digits)."""
    return f"{prefix}-{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class Pending(NamedTuple):
    """A finished request as the caller has it; cheap to build (references, no copies: a tuple,
    since this is built on the request path)."""

    id: str
    created: float  # unix time
    model: str  # the model's name (directory name or the served id)
    bank: str | None  # the adapter bank directory the patterns belong to (None: no bank)
    prompt_tokens: Sequence[int]
    settings: GenerationSettings
    trace: Sequence  # the StepEvents of the generation
    answer: str
    answer_tokens: Sequence[int]
    finish_reason: str
    wall_ms: float
    prompt: str | None = None  # the prompt text; None: decoded from prompt_tokens by `decode`
    decode: Callable[[list[int]], str] | None = None
    embedding: object = None  # the first span row's query vector (a sequence of floats) or None
    talora: TaloraConfig | None = None  # the bank's TALoRA config when TALoRA was on


@dataclass(frozen=True)
class Trajectory:
    """One stored request (a row of the trajectory store)."""

    id: str
    created: float
    model: str
    bank: str | None
    prompt: str
    prompt_tokens: list[int]
    embedding: list[float] | None
    settings: dict
    steps: list[dict]  # per step: span, step, t, committed, retrieved, entropy, confidence, talora, patterns
    patterns: list[int]  # every DGR pattern any step used, ascending
    answer: str
    answer_tokens: list[int]
    finish_reason: str
    timings: dict


@dataclass(frozen=True)
class Feedback:
    completion_id: str
    kind: str  # one of FEEDBACK_KINDS
    rating: float | None = None  # 1..5 for kind "rating"
    correction: str | None = None  # the corrected answer for kind "correction"

    @property
    def value(self) -> float:
        return feedback_value(self.kind, self.rating)


def feedback_value(kind: str, rating: float | None = None) -> float:
    """Feedback as one number in [-1, 1]: a rating maps linearly (1 -> -1, 3 -> 0, 5 -> 1),
    thumbs up / down are +1 / -1, a correction is CORRECTION_VALUE."""
    if kind == "rating":
        low, high = RATING_RANGE
        if rating is None or not (math.isfinite(rating) and low <= rating <= high):
            raise RuvdllmError(f"rating {rating}: must be in {low:g}..{high:g}")
        return 2.0 * (rating - low) / (high - low) - 1.0
    if kind == "up":
        return 1.0
    if kind == "down":
        return -1.0
    if kind == "correction":
        return CORRECTION_VALUE
    raise RuvdllmError(f"feedback kind {kind!r}: unknown (choose from {', '.join(FEEDBACK_KINDS)})")


def make_feedback(
    completion_id: str,
    rating: float | None = None,
    up: bool = False,
    down: bool = False,
    correction: str | None = None,
) -> Feedback:
    """Exactly one of a rating, up, down or a correction, checked (RuvdllmError otherwise)."""
    given = [k for k, v in (("rating", rating is not None), ("up", up), ("down", down)) if v]
    if correction is not None:
        if not correction.strip():
            raise RuvdllmError("correction: empty (give the corrected answer)")
        given.append("correction")
    if len(given) != 1:
        raise RuvdllmError("feedback: give exactly one of a rating, up, down or a correction")
    if not completion_id.strip():
        raise RuvdllmError("completion id: empty")
    feedback = Feedback(completion_id, given[0], rating, correction)
    feedback_value(feedback.kind, rating)  # checks the rating's range
    return feedback


def step_summary(event, talora: TaloraConfig | None) -> dict:
    """One StepEvent as the store keeps it: small numbers, no token lists."""
    return {
        "span": event.span,
        "step": event.step,
        "t": event.t,
        "committed": len(event.committed),
        "retrieved": len(event.retrieved),
        "drafted": event.drafted,
        "entropy": round(event.entropy, 6),
        "confidence": round(event.confidence, 6),
        "talora": [round(w, 6) for w in talora_weights(event.t, talora)] if talora is not None else [],
        "patterns": [[int(p), round(float(s), 6)] for p, s in event.patterns],
        "forward_ms": round(event.forward_ms, 3),
    }


def as_floats(vector) -> list[float] | None:
    """A query vector (a list, array.array or a numpy row) as plain floats; None stays None."""
    if vector is None:
        return None
    if hasattr(vector, "tolist"):
        return [float(x) for x in vector.tolist()]
    return [float(x) for x in array("f", vector)] if not isinstance(vector, list) else list(vector)


def trajectory_of(pending: Pending) -> Trajectory:
    """The stored form of a finished request (runs on the writer's side)."""
    prompt = pending.prompt
    if prompt is None:
        prompt = pending.decode(list(pending.prompt_tokens)) if pending.decode is not None else ""
    steps = [step_summary(e, pending.talora) for e in pending.trace]
    patterns = sorted({p for step in steps for p, _ in step["patterns"]})
    settings = asdict(pending.settings)
    return Trajectory(
        id=pending.id,
        created=pending.created,
        model=pending.model,
        bank=pending.bank,
        prompt=prompt,
        prompt_tokens=[int(t) for t in pending.prompt_tokens],
        embedding=as_floats(pending.embedding),
        settings=settings,
        steps=steps,
        patterns=patterns,
        answer=pending.answer,
        answer_tokens=[int(t) for t in pending.answer_tokens],
        finish_reason=pending.finish_reason,
        timings={
            "wall_ms": round(pending.wall_ms, 3),
            "forward_ms": round(sum(e.forward_ms for e in pending.trace), 3),
            "steps": len(pending.trace),
        },
    )
