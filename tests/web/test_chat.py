"""Chat templates in the browser (web/js/chat.js, @huggingface/jinja) render exactly as the CPython
runtime's sandboxed Jinja (runtime/model.py render_chat_template)."""

from __future__ import annotations

import pytest

from runtime.model import render_chat_template
from tests.fixtures.tiny_tokenizer import CHATML_TEMPLATE
from tests.web.conftest import open_probe, rpc

pytestmark = pytest.mark.browser

CONVERSATIONS = [
    {
        "messages": [{"role": "user", "content": "What is a diffusion language model?"}],
        "addGenerationPrompt": True,
    },
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Zähle bis drei 🙂\n  mit Einrückung"},
            {"role": "assistant", "content": "eins, zwei, drei"},
            {"role": "user", "content": "<b>markup</b> & {{ braces }}"},
        ],
        "addGenerationPrompt": True,
    },
    {"messages": [{"role": "user", "content": "no generation prompt"}], "addGenerationPrompt": False},
]

# A template in the style of SmolLM2's and Qwen's: default system turn, loop.first, whitespace control.
SYSTEM_DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def browser_render(browser, served, template: str, specials: dict) -> list[str]:
    page = open_probe(browser, served)
    return rpc(page, "chat", {"template": template, "conversations": CONVERSATIONS, "specials": specials})


@pytest.mark.parametrize(
    "template", [CHATML_TEMPLATE, SYSTEM_DEFAULT_TEMPLATE], ids=["chatml", "system-default"]
)
def test_same_text_as_cpython_jinja(browser, web_server, template):
    specials = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    rendered = browser_render(browser, web_server, template, specials)
    for conversation, text in zip(CONVERSATIONS, rendered, strict=True):
        expected = render_chat_template(
            template, conversation["messages"], conversation["addGenerationPrompt"], **specials
        )
        assert text == expected


@pytest.mark.slow
def test_default_model_chat_template(browser, web_server):
    """SmolLM2-135M-Instruct's own template, from its GGUF."""
    from ruvdllm_export.checkpoints.load import load_checkpoint
    from ruvdllm_export.default_model import default_gguf_path

    loaded = load_checkpoint(default_gguf_path(progress=False))
    template = loaded.spec.chat_template
    assert template
    specials = {"bos_token": loaded.tokenizer.id_to_token(loaded.spec.bos_token_id or 0)}
    rendered = browser_render(browser, web_server, template, specials)
    for conversation, text in zip(CONVERSATIONS, rendered, strict=True):
        expected = render_chat_template(
            template, conversation["messages"], conversation["addGenerationPrompt"], **specials
        )
        assert text == expected
