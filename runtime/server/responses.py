"""Response bodies and server-sent-event chunks in OpenAI's shapes, built from a job's Outcome.

Streaming follows OpenAI: each event is `data: <json>\\n\\n`; a chat stream opens with a delta
carrying the role, then content deltas, then an empty delta with the finish reason; with
`stream_options.include_usage` one more chunk with no choices carries the usage; the stream
ends with `data: [DONE]`. An error after the stream has started is sent as `data: {"error":
...}` (the `openai` client raises it as an APIError).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from runtime.server.engine import Job, Outcome
from runtime.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    Completion,
    CompletionChoice,
    DiffusionInfo,
    Usage,
)
from runtime.settings import acceptance_that_runs

DONE = "data: [DONE]\n\n"


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


def usage_of(outcome: Outcome) -> Usage:
    return Usage(
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
    )


def info_of(job: Job, outcome: Outcome, queued_ms: float) -> DiffusionInfo:
    return DiffusionInfo(
        seed=job.seed,
        steps=outcome.steps,
        queued_ms=round(queued_ms, 3),
        generation_ms=round(outcome.generation_ms, 3),
        forward_ms=round(outcome.forward_ms, 3),
        warnings=list(job.warnings),
        sampler=job.settings.sampler,
        acceptance=acceptance_that_runs(job.settings),
    )


@dataclass
class Reply:
    """Identity shared by every chunk of one response."""

    kind: str  # "completion" or "chat"
    model: str
    id: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        prefix = "chatcmpl" if self.kind == "chat" else "cmpl"
        self.id = self.id or f"{prefix}-{uuid.uuid4().hex}"
        self.created = self.created or int(time.time())

    # --- whole responses -------------------------------------------------------------------

    def completion(self, text: str, outcome: Outcome, info: DiffusionInfo) -> dict:
        body = Completion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[CompletionChoice(text=text, finish_reason=outcome.finish_reason)],
            usage=usage_of(outcome),
            diffusion=info,
        )
        return body.model_dump()

    def chat(self, outcome: Outcome, info: DiffusionInfo) -> dict:
        body = ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                ChatChoice(
                    message=AssistantMessage(content=outcome.text), finish_reason=outcome.finish_reason
                )
            ],
            usage=usage_of(outcome),
            diffusion=info,
        )
        return body.model_dump()

    # --- stream chunks ---------------------------------------------------------------------

    def _chunk(self, choices: list, **extra) -> dict:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def _choice(self, text: str | None, finish_reason: str | None, role: bool = False) -> dict:
        if self.kind == "chat":
            delta = (
                {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            )
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    def opening(self) -> str | None:
        """The first event: the assistant's role (chat only)."""
        return sse(self._chunk([self._choice(None, None, role=True)])) if self.kind == "chat" else None

    def delta(self, text: str) -> str:
        return sse(self._chunk([self._choice(text, None)]))

    def closing(self, outcome: Outcome, info: DiffusionInfo, include_usage: bool) -> str:
        """The finish-reason event (with the diffusion info), then usage when asked for."""
        events = sse(self._chunk([self._choice(None, outcome.finish_reason)], diffusion=info.model_dump()))
        if include_usage:
            events += sse(self._chunk([], usage=usage_of(outcome).model_dump()))
        return events
