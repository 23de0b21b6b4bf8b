"""runtime/chat_template.py renders as transformers' apply_chat_template does, over every template
the project ships or tests; what a template refuses becomes one RuvdllmError."""

from __future__ import annotations

import pytest

from runtime.chat_template import FALLBACK_TEMPLATE, render_chat, special_tokens
from ruvdllm.errors import RuvdllmError
from tests.fixtures.chat_templates import CONVERSATIONS, SMOLLM2_TEMPLATE, SPECIALS, TEMPLATES


@pytest.mark.parametrize("template", TEMPLATES.values(), ids=TEMPLATES.keys())
def test_same_text_as_transformers(template):
    from transformers.utils.chat_template_utils import render_jinja_template

    for conversation in CONVERSATIONS:
        messages, generation = conversation["messages"], conversation["add_generation_prompt"]
        (expected,), _ = render_jinja_template(
            conversations=[messages], chat_template=template, add_generation_prompt=generation, **SPECIALS
        )
        assert render_chat(template, messages, generation, **SPECIALS) == expected


def test_the_special_tokens_reach_the_template():
    assert render_chat("{{ bos_token }}|{{ eos_token }}", [], bos_token="<s>", eos_token="</s>") == "<s>|</s>"
    assert render_chat("{{ bos_token }}|{{ eos_token }}", [], eos_token="</s>") == "|</s>"


def test_special_tokens_are_the_models_bos_and_first_eos():
    vocabulary = {1: "<s>", 2: "</s>", 3: "<|eot|>"}
    assert special_tokens(vocabulary.get, 1, (2, 3)) == {"bos_token": "<s>", "eos_token": "</s>"}
    assert special_tokens(vocabulary.get, None, (3,)) == {"eos_token": "<|eot|>"}
    assert special_tokens(vocabulary.get, 9, ()) == {}  # an id without text is left out


def test_a_model_without_a_template_gets_the_fallback():
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert render_chat(None, messages, add_generation_prompt=False) == "user: q\nassistant: a\n"
    assert render_chat("", messages[:1]) == "user: q\nassistant:"
    assert render_chat(None, messages[:1]) == render_chat(FALLBACK_TEMPLATE, messages[:1])


@pytest.mark.parametrize(
    "template, message",
    [
        ("{{ raise_exception('nope') }}", "chat template: nope"),
        ("{% set _ = messages.append(1) %}", "unsafe"),  # the sandbox: messages are read-only
        ("{{ ''.__class__.__mro__ }}", "unsafe"),
        ("{% for %}", "chat template: "),  # syntax error
    ],
)
def test_what_a_template_refuses_is_one_error(template, message):
    with pytest.raises(RuvdllmError, match=message):
        render_chat(template, [{"role": "user", "content": "hi"}])


def test_messages_are_not_changed():
    messages = [{"role": "user", "content": "hi"}]
    render_chat("{% set m = messages[0] %}{{ m['content'] }}", messages)
    assert messages == [{"role": "user", "content": "hi"}]


@pytest.mark.slow
def test_the_default_models_template_is_the_one_tested():
    """The default model's GGUF still carries SMOLLM2_TEMPLATE (fetched into the cache when absent)."""
    import gguf

    from ruvdllm_export.checkpoints.gguf_reader import read_metadata
    from ruvdllm_export.default_model import default_gguf_path

    metadata = read_metadata(gguf.GGUFReader(default_gguf_path(progress=False)))
    assert metadata["tokenizer.chat_template"] == SMOLLM2_TEMPLATE
    tokens = metadata["tokenizer.ggml.tokens"]
    bos, eos = metadata["tokenizer.ggml.bos_token_id"], metadata["tokenizer.ggml.eos_token_id"]
    assert {"bos_token": tokens[bos], "eos_token": tokens[eos]} == SPECIALS
