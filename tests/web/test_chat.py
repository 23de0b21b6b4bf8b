"""Chat templates in the browser (web/js/chat.js, @huggingface/jinja) render byte for byte as the
runtime's renderer (runtime/chat_template.py) does, over every template the project ships or
tests (tests/fixtures/chat_templates.py) and conversations with and without a system turn, over
several turns, with the generation prompt on and off."""

from __future__ import annotations

import pytest

from runtime.chat_template import render_chat
from tests.fixtures.chat_templates import CONVERSATIONS, SPECIALS, TEMPLATES
from tests.web.conftest import open_probe, rpc

pytestmark = pytest.mark.browser


def browser_render(browser, served, template: str, specials: dict) -> list[str]:
    page = open_probe(browser, served)
    conversations = [
        {"messages": c["messages"], "addGenerationPrompt": c["add_generation_prompt"]} for c in CONVERSATIONS
    ]
    return rpc(page, "chat", {"template": template, "conversations": conversations, "specials": specials})


def python_render(template: str, specials: dict) -> list[str]:
    return [
        render_chat(template, c["messages"], c["add_generation_prompt"], **specials) for c in CONVERSATIONS
    ]


@pytest.mark.parametrize("template", TEMPLATES.values(), ids=TEMPLATES.keys())
def test_same_text_as_the_runtime(browser, web_server, template):
    assert browser_render(browser, web_server, template, SPECIALS) == python_render(template, SPECIALS)


@pytest.mark.slow
def test_default_model_chat_template(browser, web_server):
    """SmolLM2-135M-Instruct's own template and special tokens, from its GGUF."""
    import gguf

    from ruvdllm_export.checkpoints.gguf_reader import read_metadata
    from ruvdllm_export.default_model import default_gguf_path

    metadata = read_metadata(gguf.GGUFReader(default_gguf_path(progress=False)))
    template = metadata["tokenizer.chat_template"]
    assert template
    tokens = metadata["tokenizer.ggml.tokens"]
    specials = {
        "bos_token": tokens[metadata["tokenizer.ggml.bos_token_id"]],
        "eos_token": tokens[metadata["tokenizer.ggml.eos_token_id"]],
    }
    assert browser_render(browser, web_server, template, specials) == python_render(template, specials)
