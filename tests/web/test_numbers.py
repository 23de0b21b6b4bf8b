"""Numbers the page shows agree with each other: the live tokens count what the final count counts,
a cached load never says it downloads, the load's bar only moves forward, a stopped answer is the
unbroken prefix the live view showed, and WebAssembly uses the device's cores."""

from __future__ import annotations

import pytest

from runtime.cpython_model import open_model
from runtime.settings import GenerationSettings
from tests.web.app import app_url, generate, open_app, set_settings, state
from tests.web.artifacts import variant

pytestmark = pytest.mark.browser

PROMPT = "What is a diffusion language model?"


@pytest.fixture(scope="module")
def model_url(web_server, shared_tiny_model):
    return web_server.mount_model("tiny-numbers", shared_tiny_model)


@pytest.fixture(scope="module")
def eos_model(shared_tiny_model, tmp_path_factory):
    """The tiny model with its end-of-sequence token set to one its greedy answer has inside the
    first block (8), so the block's last step holds committed cells after the end of the answer."""
    model = open_model(shared_tiny_model)
    settings = GenerationSettings(length=16, block_size=8, stop_at_eos=False)
    tokens = model.generate(PROMPT, settings).tokens
    end = next(i for i in range(2, 7) if tokens[i] not in tokens[:i])
    directory = variant(
        shared_tiny_model, tmp_path_factory.mktemp("eos") / "eos", eos_token_ids=(tokens[end],)
    )
    return directory, end


def test_live_tokens_count_the_answer_as_the_final_count_does(browser, web_server, eos_model):
    directory, end = eos_model
    page = open_app(browser, app_url(web_server, web_server.mount_model("tiny-eos", directory)))
    result = generate(page, PROMPT, {"sampler": "bd3lm", "length": 16, "block_size": 8, "chat": False})
    complete, last = result["complete"], result["lastStep"]
    assert complete["stats"]["finishReason"] == "stop" and len(complete["tokens"]) == end
    assert sum(cell["state"] == "eos" for cell in last["cells"]) == 8 - end  # dimmed: after the end
    assert last["committedTokens"] == complete["stats"]["generatedTokens"] == end
    # the same count over a time at most the whole run's: the live rate is not below the final one
    assert last["tokensPerSecond"] >= complete["stats"]["tokensPerSecond"]


def test_a_cached_load_never_says_downloading_and_the_bar_only_moves_forward(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    cold = state(page)["progress"]
    page.reload()
    page.wait_for_function("window.ruvdllm && window.ruvdllm.phase === 'ready'")
    warm = state(page)["progress"]
    for load in (cold, warm):
        bars = [p["bar"] for p in load]
        assert bars == sorted(bars) and bars[-1] == 100, bars
    assert any(p["phase"] == "download" for p in cold)
    assert not any(p["phase"] == "download" or "download" in p["text"] for p in warm), warm
    assert any(p["phase"] == "cache" for p in warm)


def test_a_stopped_answer_is_the_unbroken_prefix_the_live_view_showed(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    set_settings(page, {"sampler": "mdlm", "length": 120, "order": "confidence", "chat": False})
    page.fill("#prompt", "Count slowly.")
    page.click("#generate")
    # MDLM in confidence order commits its most confident positions anywhere: wait for a committed
    # token after a gap
    page.wait_for_function(
        """() => {
            const step = window.ruvdllm.lastStep;
            if (!step) return false;
            const states = step.cells.map((c) => c.state);
            return states.indexOf('masked') >= 0 && states.lastIndexOf('new') > states.indexOf('masked')
                || states.lastIndexOf('committed') > states.indexOf('masked');
        }"""
    )
    page.click("#stop")
    page.wait_for_function("window.ruvdllm.complete")
    page_state = state(page)
    cells = page_state["lastStep"]["cells"]
    first_gap = next(i for i, c in enumerate(cells) if c["state"] not in ("committed", "new"))
    assert any(c["state"] in ("committed", "new") for c in cells[first_gap:]), "no gap to test"
    complete = page_state["complete"]
    assert complete["interrupted"] and complete["tokens"] == [c["id"] for c in cells[:first_gap]]
    assert page.locator("#output").inner_text().strip() == (complete["text"] + " …").strip()
    assert page.locator("#cells .cell.masked").count() > 0  # the gaps stay visible in the cells


def test_webassembly_uses_the_cores_the_device_has(browser, web_server, model_url):
    page = browser.new_page()
    cdp = browser.context.new_cdp_session(page)
    cdp.send("Emulation.setHardwareConcurrencyOverride", {"hardwareConcurrency": 2})
    page.goto(app_url(web_server, model_url))
    page.wait_for_function("window.ruvdllm && (window.ruvdllm.ready || window.ruvdllm.error)")
    info = state(page)["info"]
    assert info["crossOriginIsolated"] and info["numThreads"] == 2
    assert page.locator("#chip-ep").inner_text() == "WebAssembly · 2 threads"
