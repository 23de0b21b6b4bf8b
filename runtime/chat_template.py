"""Chat templates, rendered the way Hugging Face transformers renders them (`apply_chat_template`).
The one renderer of every Python path: the CPython runtime and its server, and the converter's
training documents and distillation prompts. The browser renders with @huggingface/jinja
(web/js/chat.js) and never loads this module; tests/web/test_chat.py proves the two
byte-identical over every template the project ships or tests.

transformers' environment, as in its `chat_template_utils`: a sandbox (ImmutableSandboxedEnvironment —
a template is code from the checkpoint), trim_blocks and lstrip_blocks, the loop controls
(`break`, `continue`), `raise_exception(message)`, `strftime_now(format)` and a `tojson` that keeps
non-ASCII and does not escape HTML. The template sees `messages`, `add_generation_prompt` and the
special tokens `bos_token` / `eos_token` the model has. Not carried over: the `{% generation %}`
tag (assistant-token masks for training) and `tools` / `documents` — the runtime has no tool
calling, and no template the project ships uses them.

A model without a template gets FALLBACK_TEMPLATE: a `role: content` line per message and, for
generation, an opened `assistant:` line. The runtime itself does not chat-format such a model (the
command line and the page send the prompt as is; the server refuses chat requests); the converter
renders its training documents and distillation prompts with it.

jinja2 is optional and imported only when a template is rendered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ruvdllm.errors import RuvdllmError

if TYPE_CHECKING:
    from runtime.model import DiffusionModel

FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


def special_tokens(
    id_to_token: Callable[[int], str | None], bos_token_id: int | None, eos_token_ids: Sequence[int]
) -> dict[str, str]:
    """`bos_token` / `eos_token` for the template, as transformers passes them: the text of the
    model's BOS token and of its first EOS token, for those it has."""
    specials = {}
    for name, token in (("bos_token", bos_token_id), ("eos_token", next(iter(eos_token_ids), None))):
        text = None if token is None else id_to_token(token)
        if text is not None:
            specials[name] = text
    return specials


def chat_prompt(
    model: DiffusionModel, messages: Sequence[Mapping], add_generation_prompt: bool = True
) -> str:
    """`messages` through a model's own chat template, with its BOS/EOS tokens (what
    web/js/chat.js formatPrompt does in the browser). A model without a template is an error here:
    callers decide what a prompt for it is."""
    config = model.config
    if not config.chat_template:
        raise RuvdllmError(f"{model.directory}: the model has no chat template")
    specials = special_tokens(model.tokenizer.id_to_token, config.bos_token_id, config.eos_token_ids)
    return render_chat(config.chat_template, messages, add_generation_prompt, **specials)


def render_chat(
    template: str | None,
    messages: Sequence[Mapping],
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
) -> str:
    """`messages` ({"role", "content"} dicts) through `template` (FALLBACK_TEMPLATE when None or
    empty). Raises RuvdllmError for what the template refuses (`raise_exception`, a sandbox
    violation, a syntax error); other exceptions from the template's own code pass through."""
    try:
        from jinja2 import TemplateError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise RuvdllmError(
            "chat templates need the package 'jinja2': pip install 'ruvdllm[runtime]'"
        ) from None

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    specials = {
        name: value
        for name, value in (("bos_token", bos_token), ("eos_token", eos_token))
        if value is not None
    }
    try:
        compiled = env.from_string(template or FALLBACK_TEMPLATE)
        return compiled.render(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **specials
        )
    except TemplateError as exc:
        raise RuvdllmError(f"chat template: {exc}") from None
