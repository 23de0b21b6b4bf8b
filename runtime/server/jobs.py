"""OpenAI requests -> checked generation jobs. Everything the client could have got wrong is found
here, before the request is queued or a response has started, and raised as an ApiError 4xx
naming the field.

These functions encode and render templates: routes.py calls them off the event loop. They never
wait for a model's lock, which a generation holds: the model's row cost was read at its warm-up
(DiffusionModel.extra_row_cost), and the move to the full graph is left to the model that runs
the job. So they answer at once even while every model is busy."""

from __future__ import annotations

from runtime.artifact import BASE_MODEL_SAMPLERS, sampler_warning
from runtime.chat_template import chat_prompt
from runtime.server.engine import Job
from runtime.server.errors import ApiError, from_runtime
from runtime.server.schemas import ChatCompletionRequest, CompletionRequest, GenerationRequest
from runtime.settings import (
    DIFFUSION_ONLY,
    USER_ACCEPTANCE,
    GenerationSettings,
    check_acceptance,
    inputs_of,
    new_seed,
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


def knobs_not_read(request: GenerationRequest) -> list[str]:
    """The knobs a request gives that the sampler it names would ignore: the diffusion-only
    ones under `ar` and `verified` (neither denoises), and `block_size` under `ar` (one token per
    forward; `verified` drafts blocks of it). `steps` is the runtime's to refuse (it allows 1),
    and under sampler auto these knobs choose a diffusion sampler instead (settings.sampler_for)."""
    if request.sampler not in BASE_MODEL_SAMPLERS:
        return []
    unread = [name for name in DIFFUSION_ONLY if name != "steps"]
    if request.sampler == "ar":
        unread.append("block_size")
    return [name for name in unread if getattr(request, name) is not None]


def _checked(
    model, prompt: list[int], settings: GenerationSettings, request: GenerationRequest, prompt_param: str
) -> Job:
    try:
        model.check(len(prompt), settings)
    except RuvdllmError as exc:
        raise from_runtime(exc, prompt_param) from None
    # a knob the named sampler would ignore is refused, as `steps` is: an answer from settings
    # other than those asked for would pass for theirs
    if unread := knobs_not_read(request):
        raise ApiError(
            400,
            f"{unread[0]}: the {request.sampler} sampler does not use it (leave it unset, or choose "
            "a sampler that does)",
            unread[0],
        )
    # sampler auto -> the one that runs on this model and machine (reported in `diffusion`). The
    # model stays on its graph: the one that runs the job moves to the full graph if it must
    # (DiffusionModel.generate), without this check waiting for a generation to end.
    try:
        settings = model.concrete(settings, request.acceptance, switch=False)
    except RuvdllmError as exc:
        raise from_runtime(exc) from None
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
