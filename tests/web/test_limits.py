"""Long prompts in the page: read in pieces with progress (and the same tokens as CPython), Stop
acting while the prompt is read, and what the device cannot hold refused before any forward, in
one line. `?prefill=N` (prompt rows per forward) and `?memory=MB` (the device's budget) make the
tiny model's limits those of a small device (runtime/memory_plan.py)."""

from __future__ import annotations

import pytest

from runtime.cpython_model import open_model
from tests.web.app import app_url, generate, open_app, set_settings, state
from tests.web.test_app import assert_same_as_cpython

pytestmark = pytest.mark.browser

LENGTH = 16


@pytest.fixture(scope="module")
def model_url(web_server, shared_tiny_model):
    return web_server.mount_model("tiny-limits", shared_tiny_model)


@pytest.fixture(scope="module")
def long_prompt(shared_tiny_model) -> str:
    """A prompt of ~200 tokens: most of the tiny model's context of 256."""
    model = open_model(shared_tiny_model)
    words = []
    while len(model.encode(" ".join(words))) < 200:
        words.append(f"word{len(words)}")
    return " ".join(words)


def test_a_long_prompt_is_read_in_pieces_with_progress(
    browser, web_server, model_url, shared_tiny_model, long_prompt
):
    page = open_app(browser, app_url(web_server, model_url, prefill=16))
    assert state(page)["info"]["limits"]["piece_rows"] == 16
    settings = {"sampler": "bd3lm", "length": LENGTH, "block_size": 8, "chat": False}
    result = generate(page, long_prompt, {**settings, "seed": 0})
    prompt_tokens = len(result["complete"]["promptIds"])
    done = [p["done"] for p in result["prefill"]]
    assert done == list(range(16, prompt_tokens, 16))  # every piece reported, in order
    assert {p["total"] for p in result["prefill"]} == {prompt_tokens + 8}
    assert result["prefill"][-1]["at"] < result["trace"][0]["at"]  # before the first denoising step
    # the pieces are exact: the same answer as CPython reading the prompt in one forward
    assert_same_as_cpython(result, shared_tiny_model, settings, seed=0, chat=False, prompt=long_prompt)


def test_stop_acts_while_the_prompt_is_read(browser, web_server, model_url, long_prompt):
    page = open_app(browser, app_url(web_server, model_url, prefill=1))  # one forward per prompt token
    set_settings(page, {"length": LENGTH, "chat": False})
    page.fill("#prompt", long_prompt)
    page.click("#generate")
    page.wait_for_function("window.ruvdllm.prefill.length >= 1 || window.ruvdllm.error")
    assert page.locator("#step-label").inner_text().startswith("reading the prompt")
    page.click("#stop")
    page.wait_for_function("window.ruvdllm.complete || window.ruvdllm.error")
    page_state = state(page)
    assert page_state["complete"] and page_state["complete"]["interrupted"], page_state["error"]
    assert page_state["steps"] == 0, "the prompt was read to the end"
    assert page_state["prefill"][-1]["done"] < page_state["prefill"][-1]["total"] - 1
    assert page.locator("#step-label").inner_text() == "stopped" and page_state["phase"] == "ready"


def test_what_the_device_cannot_hold_is_refused_in_one_line(browser, web_server, model_url, long_prompt):
    """1 MB for the model's work: MDLM's one forward over prompt + answer does not fit; BD3LM reads
    the prompt in pieces that do."""
    page = open_app(browser, app_url(web_server, model_url, memory=1))
    result = generate(page, long_prompt, {"sampler": "mdlm", "length": LENGTH, "chat": False})
    assert result["complete"] is None and result["steps"] == 0 and result["prefill"] == []
    message = result["error"]["message"]
    assert (
        "in one MDLM forward need about" in message and ", more than this device allows (1.0 MB)" in message
    )
    assert "\n" not in message and page.locator("#error-text").inner_text() == message
    result = generate(page, long_prompt, {"sampler": "bd3lm", "length": LENGTH, "chat": False})
    assert result["complete"] and result["prefill"], result["error"]
