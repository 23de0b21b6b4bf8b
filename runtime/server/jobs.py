"""OpenAI requests -> checked generation jobs. Everything the client could have got wrong is found
here, before the request is queued or a response has started, and raised as an ApiError 4xx
naming the field."""

from __future__ import annotations

import random

from runtime.artifact import sampler_warning
from runtime.chat_template import chat_prompt
from runtime.server.engine import Job
from runtime.server.errors import ApiError, from_runtime
from runtime.server.schemas import ChatCompletionRequest, CompletionRequest, GenerationRequest
from runtime.settings import (
    USER_ACCEPTANCE,
    GenerationSettings,
    check_acceptance,
    inputs_of,
    settings_from,
)
from ruvdllm.errors import RuvdllmError

DEFAULTS = GenerationSettings()


def check_model_name(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise ApiError(
            404,
            f"model {requested!r}: not served here (this server serves {served!r})",
            "model",
            "model_not_found",
        )


def settings_for(
    request: GenerationRequest, length: int | None, prompt_tokens: int, context: int
) -> GenerationSettings:
    """The request's knobs (its fields named as runtime.settings.INPUTS; None keeps the default)
    over the runtime's defaults. Without max_tokens the length is the runtime's default,
    shortened to what the context leaves after the prompt."""
    if length is None:
        length = max(1, min(DEFAULTS.length, context - prompt_tokens))
    given = inputs_of(dict(request))  # the fields as they are (no serialisation)
    given["acceptance"] = request.acceptance or USER_ACCEPTANCE
    return settings_from({**given, "length": length, "stop_at_eos": not request.ignore_eos}, DEFAULTS)


def new_seed() -> int:
    """A fresh seed when the client gives none (it is echoed back so a result can be replayed)."""
    return random.SystemRandom().getrandbits(63)


def _checked(
    model, prompt: list[int], settings: GenerationSettings, request: GenerationRequest, prompt_param: str
) -> Job:
    try:
        model.check(len(prompt), settings)
    except RuvdllmError as exc:
        raise from_runtime(exc, prompt_param) from None
    # sampler auto -> the one that runs on this model and machine (reported in `diffusion`)
    settings = model.concrete(settings, request.acceptance)
    try:
        check_acceptance(request.acceptance, settings.sampler)
    except RuvdllmError as exc:
        raise from_runtime(exc) from None
    seed = request.seed if request.seed is not None else new_seed()
    # A sampler the model was not trained for runs (a comparison may want it), with a warning.
    warnings = tuple(w for w in (sampler_warning(model.config, settings.sampler),) if w)
    return Job(prompt=prompt, settings=settings, seed=seed, stops=request.stop_sequences(), warnings=warnings)


def _context_check(prompt_tokens: int, context: int, param: str) -> None:
    if prompt_tokens >= context:
        raise ApiError(
            400,
            f"{param}: {prompt_tokens} tokens, the model's context is {context} (at least one token must be left to generate)",
            param,
            "context_length_exceeded",
        )


def completion_job(model, request: CompletionRequest) -> tuple[Job, str]:
    """The job for /v1/completions and the prompt's text (for `echo`)."""
    prompt = request.prompt
    if isinstance(prompt, list) and (not prompt or isinstance(prompt[0], str)):
        prompt = prompt[0] if prompt else ""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ApiError(400, "prompt: empty (give some text)", "prompt")
        ids, text = model.encode(prompt), prompt
    else:
        vocab = model.config.vocab_size
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise ApiError(400, f"prompt: token id {bad} outside the vocabulary 0..{vocab - 1}", "prompt")
        ids, text = list(prompt), model.decode(list(prompt))
    context = model.config.max_position
    _context_check(len(ids), context, "prompt")
    settings = settings_for(request, request.max_tokens, len(ids), context)
    return _checked(model, ids, settings, request, "prompt"), text


def chat_job(model, request: ChatCompletionRequest) -> Job:
    """The job for /v1/chat/completions: the messages through the model's chat template."""
    if not model.config.chat_template:
        raise ApiError(400, "this model has no chat template: use /v1/completions", "messages")
    messages = [{"role": m.role, "content": m.text()} for m in request.messages]
    if not any(m["content"].strip() for m in messages):
        raise ApiError(400, "messages: every message is empty (give some text)", "messages")
    try:
        text = chat_prompt(model, messages)
    except RuvdllmError as exc:
        raise ApiError(400, f"messages: {exc}", "messages") from None
    except Exception as exc:  # the template is the model's code; whatever it raises, the input caused it
        raise ApiError(
            400, f"messages: the chat template cannot render them ({type(exc).__name__}: {exc})", "messages"
        ) from None
    ids = model.encode(text)
    context = model.config.max_position
    _context_check(len(ids), context, "messages")
    settings = settings_for(request, request.length(), len(ids), context)
    return _checked(model, ids, settings, request, "messages")
