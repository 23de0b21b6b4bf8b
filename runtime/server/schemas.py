"""The OpenAI request and response bodies the server speaks (Pydantic), plus the diffusion knobs
it accepts as extra body fields (`extra_body=` in the `openai` client).

Requests are strict: unknown fields, wrong JSON types and out-of-range values are 400s naming
the field, so a misspelt knob (`step` for `steps`) is an error, not silently ignored. OpenAI
fields this server cannot honour are accepted only at their neutral value (n = 1, no logprobs,
no penalties, no tools), so a client never gets an answer it did not ask for. `null` is every
optional field's default, as the official clients send it for "not given". Every string a
request carries must be valid Unicode (`_Request`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.dgr import STRATEGIES as DGR_STRATEGIES
from runtime.drafting import ACCEPTANCE_CHOICES
from runtime.learning.trajectory import RATING_RANGE
from runtime.schedules import SCHEDULES
from runtime.settings import DECODINGS, ORDERS, SAMPLERS

Sampler = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]
Acceptance = Literal[tuple(ACCEPTANCE_CHOICES)]  # type: ignore[valid-type]
Decoding = Literal[tuple(DECODINGS)]  # type: ignore[valid-type]
Order = Literal[tuple(ORDERS)]  # type: ignore[valid-type]
ScheduleName = Literal[tuple(SCHEDULES)]  # type: ignore[valid-type]
DgrStrategy = Literal[DGR_STRATEGIES]  # type: ignore[valid-type]
PositiveInt = Annotated[int, Field(ge=1)]
MAX_STOP = 4  # as OpenAI
# OpenAI fields accepted only at their neutral value, and why (the 400's message).
UNSUPPORTED = {
    "n": "one choice per request; send several requests",
    "best_of": "one choice per request",
    "logprobs": "the graph returns top-k candidates per position, not per-token logprobs of the text",
    "top_logprobs": "no logprobs",
    "suffix": "no fill-in-the-middle",
    "presence_penalty": "diffusion decoding has no repetition penalties",
    "frequency_penalty": "diffusion decoding has no repetition penalties",
    "logit_bias": "the graph returns top-k candidates, not full logits to bias",
    "tools": "no tool calling",
    "tool_choice": "no tool calling",
}


def lone_surrogate(value) -> int | None:
    """The index of the first lone UTF-16 surrogate in `value`, else None. JSON's `"\\ud800"`
    escape parses into one, and no UTF-8 encoder takes it: not the tokenizer, not a JSON reply,
    not the trajectory store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _check_unicode(value) -> None:
    """Raise ValueError if a string anywhere in `value` (lists and dicts, keys included) holds a
    lone surrogate."""
    if isinstance(value, str):
        if (at := lone_surrogate(value)) is not None:
            raise ValueError(
                f"not valid Unicode (a lone UTF-16 surrogate at character {at}; send UTF-8 text)"
            )
    elif isinstance(value, list | tuple):
        for item in value:
            _check_unicode(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key)
            _check_unicode(item)


class _Request(BaseModel):
    """A request body or part of one: every field's strings are checked here, once, so no
    field (prompt, message content, stop sequences, the model's id) reaches the tokenizer or a
    reply with text it cannot encode. Nested parts (messages, text parts) check their own
    fields, so the error names the innermost field."""

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, value):
        _check_unicode(value)
        return value


class _Strict(_Request):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool | None = None


class GenerationRequest(_Strict):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None  # the one served model; None or its id
    max_tokens: PositiveInt | None = None
    # None: the runtime's default (0, greedy); NaN and infinity are no temperature
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    n: Literal[1] | None = None  # one choice per request
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None  # accepted, unused
    presence_penalty: Literal[0, 0.0] | None = None  # no penalties in diffusion decoding
    frequency_penalty: Literal[0, 0.0] | None = None
    logit_bias: dict[str, float] | None = None

    # Diffusion knobs (extra body fields); None: the runtime's defaults (runtime/settings.py).
    steps: PositiveInt | None = None  # denoising steps per span (block for BD3LM, whole length for MDLM)
    block_size: PositiveInt | None = None  # BD3LM block; None: the model's
    # None or "auto": verified where the model can (ar where rows are dear: row_cost.py), else diffusion
    sampler: Sampler | None = None
    # the verified sampler's check of drafts; None or "auto" (as `ruvdllm generate`): lenient when
    # greedy, exact when sampling (runtime/drafting.py). Named for another sampler: a 400
    acceptance: Acceptance | None = None
    decoding: Decoding | None = None  # scheduled count, Fast-dLLM "threshold" or "entropy-bounded"
    threshold: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)  # for decoding "threshold"
    entropy_bound: float | None = Field(None, ge=0.0, allow_inf_nan=False)  # nats, for "entropy-bounded"
    order: Order | None = None  # which masked positions commit first: "confidence" or "left-to-right"
    schedule: ScheduleName | None = None
    top_k: int | None = Field(None, ge=0)  # 0: all of the graph's candidates
    talora: bool | None = None  # timestep-aware adapter banks on/off
    dgr: bool | None = None  # uncertainty-guided retrieval on/off
    dgr_strategy: DgrStrategy | None = None  # when to retrieve: entropy, confidence-gap, hybrid, adaptive
    ignore_eos: bool | None = None  # generate all max_tokens even past an end-of-sequence token (as vLLM)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        stops = [value] if isinstance(value, str) else value
        if stops is not None:
            if len(stops) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop sequences")
            if any(s == "" for s in stops):
                raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value):
        if value:
            raise ValueError("unsupported")
        return value

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int]
    echo: bool | None = None  # prepend the prompt to the returned text
    logprobs: Literal[0] | None = None
    best_of: Literal[1] | None = None
    suffix: None = None  # no fill-in-the-middle endpoint

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list) and len(value) > 1 and all(isinstance(v, str) for v in value):
            raise ValueError("one prompt per request (batches are not supported; send several requests)")
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            raise ValueError("one prompt per request (batches of token lists are not supported)")
        if not isinstance(value, str | list) or (
            isinstance(value, list) and not all(isinstance(v, str) for v in value) and not _token_ids(value)
        ):
            raise ValueError("must be a string, a list of one string, or a list of token ids")
        return value


def _token_ids(values: list) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


class TextPart(_Request):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    # Extra fields are ignored: clients often send back a whole earlier response message
    # (refusal, annotations, ... set to null).
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value):
        # before the union is tried member by member: one error naming the content, not one per member
        _check_unicode(value)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
            return value
        raise ValueError("must be a string or a list of text parts ({'type': 'text', 'text': ...})")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None  # the newer name of max_tokens
    logprobs: Literal[False] | None = None
    top_logprobs: None = None
    tools: Annotated[list, Field(max_length=0)] | None = None  # no tool calling
    tool_choice: Literal["none"] | None = None
    response_format: dict | None = None

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value):
        if value is not None and value.get("type") != "text":
            raise ValueError("only {'type': 'text'} is supported")
        return value

    @model_validator(mode="after")
    def _one_length(self):
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            if self.max_tokens != self.max_completion_tokens:
                raise ValueError("max_tokens and max_completion_tokens disagree; send one")
        return self

    def length(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# --- responses --------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class DiffusionInfo(BaseModel):
    """Not in OpenAI's schema (clients ignore unknown fields): how the answer was made and
    where the time went. `seed` replays the request."""

    seed: int
    sampler: str  # the sampler that ran (a request's "auto", the default, resolved for the model)
    acceptance: str | None = None  # the verified sampler's rule that ran ("exact", "lenient"); else None
    steps: int  # denoising steps (forwards)
    queued_ms: float  # waiting for a free model
    generation_ms: float
    forward_ms: float  # of generation_ms, inside onnxruntime
    warnings: list[str] = []  # e.g. a sampler the model was not trained for (config `samplers`)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    diffusion: DiffusionInfo | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    diffusion: DiffusionInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ruvdllm"
    max_model_len: int  # as vLLM reports it: the context length


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackRequest(_Strict):
    """POST /v1/feedback: exactly one of a rating, a thumb or a corrected answer, on a completion
    id this server returned (docs/learning.md)."""

    completion_id: str = Field(min_length=1)
    rating: float | None = Field(None, ge=RATING_RANGE[0], le=RATING_RANGE[1], allow_inf_nan=False)
    thumbs: Literal["up", "down"] | None = None
    correction: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> FeedbackRequest:
        given = [v for v in (self.rating, self.thumbs, self.correction) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of rating, thumbs or correction")
        return self

    def kind(self) -> str:
        if self.rating is not None:
            return "rating"
        return self.thumbs if self.thumbs is not None else "correction"


class FeedbackReply(BaseModel):
    object: Literal["feedback"] = "feedback"
    completion_id: str
    kind: str  # rating | up | down | correction
    value: float  # the feedback as one number in [-1, 1]
    patterns_rescored: int  # DGR patterns of that answer whose usefulness moved
