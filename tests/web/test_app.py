"""The client end to end in headless Chromium: a tiny exported model generates the same tokens as the
CPython runtime at temperature 0 with the same seed — TALoRA and DGR on — on the wasm EP and on the
WebGPU EP (SwiftShader); the page after a generation shows what it should."""

from __future__ import annotations

import pytest

from tests.web.app import app_url, cpython_reference, generate, open_app, state
from tests.web.artifacts import tiny_web_model

pytestmark = pytest.mark.browser

PROMPT = "What is a diffusion language model?"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_web_model(tmp_path_factory.mktemp("web-models"))


@pytest.fixture(scope="module")
def model_url(web_server, tiny_model):
    return web_server.mount_model("tiny", tiny_model)


def assert_same_as_cpython(
    page_state: dict, model_dir, settings: dict, seed: int, chat: bool = True, prompt: str = PROMPT
) -> None:
    complete = page_state["complete"]
    assert complete is not None, page_state["error"]
    prompt_ids, done, trace = cpython_reference(model_dir, prompt, settings, seed, chat)
    assert complete["promptIds"] == prompt_ids
    assert complete["tokens"] == done.tokens
    assert complete["text"] == done.text
    # the same steps, and DGR retrieved for the same positions at each of them
    browser_trace = [(s["span"], s["step"], s["retrieved"]) for s in page_state["trace"]]
    assert browser_trace == [(e.span, e.step, e.retrieved) for e in trace]


def test_wasm_generation_matches_cpython_and_the_page_shows_it(
    browser, web_server, tiny_model, model_url, tmp_path
):
    page = open_app(browser, app_url(web_server, model_url, ep="wasm", threads=2))
    info = state(page)["info"]
    assert info["ep"] == "wasm" and info["numThreads"] == 2 and info["crossOriginIsolated"]
    assert info["bank"]["present"] and info["bank"]["patterns"] == 8

    settings = {"sampler": "bd3lm", "length": 24, "block_size": 8, "talora": True, "dgr": True, "chat": True}
    result = generate(page, PROMPT, {**settings, "seed": 0})
    assert_same_as_cpython(result, tiny_model, settings, seed=0)
    assert any(s["retrieved"] for s in result["trace"]), "DGR never retrieved: the bank path went untested"
    # on WebAssembly the cache crosses into onnxruntime's memory and back at every forward, and the
    # runner's count sees it (on WebGPU it stays 0: test_gpu_cache.py)
    moved = result["complete"]["stats"]["transfers"]
    assert moved["kvInBytes"] > 0 and moved["kvOutBytes"] > 0, moved

    # What a person sees after the generation.
    page.screenshot(path=str(tmp_path / "after-generation.png"), full_page=True)
    cells = page.locator("#cells .cell")
    assert cells.count() == 24
    assert page.locator("#cells .cell.masked").count() == 0
    assert page.locator("#output").inner_text().strip() != "" or result["complete"]["text"] == ""
    assert page.locator("#chip-ep").inner_text() == "WebAssembly · 2 threads"
    assert page.locator("#stat-tps").inner_text() not in ("", "—")
    assert page.locator("#stat-bridge").inner_text().endswith("ms")
    assert page.locator("#talora-bars .bar-row").count() == 3
    assert page.locator("#step-label").inner_text().startswith("done")
    assert page.locator("#generate").is_enabled() and page.locator("#stop").is_disabled()


def test_wasm_mdlm_threshold_sampling_matches_cpython(browser, web_server, tiny_model, model_url):
    page = open_app(browser, app_url(web_server, model_url, ep="wasm"))
    settings = {
        "sampler": "mdlm",
        "length": 16,
        "steps": 8,
        "decoding": "threshold",
        "threshold": 0.5,
        "temperature": 0.8,
        "top_p": 0.9,
        "talora": True,
        "dgr": True,
        "chat": False,
    }
    result = generate(page, PROMPT, {**settings, "seed": 7})
    assert_same_as_cpython(result, tiny_model, settings, seed=7, chat=False)


def test_wasm_verified_sampler_matches_cpython(browser, web_server, tmp_path_factory):
    """A model with a conversion adapter and its switch: the page feeds adapter_gate, and the
    verified sampler's tokens (the AR model's) are CPython's."""
    model = tiny_web_model(tmp_path_factory.mktemp("web-switch"), conversion_adapter=True)
    page = open_app(browser, app_url(web_server, web_server.mount_model("switch", model), ep="wasm"))
    settings = {
        "sampler": "verified",
        "length": 16,
        "block_size": 4,
        "talora": True,
        "dgr": True,
        "chat": True,
    }
    result = generate(page, PROMPT, {**settings, "seed": 0})
    assert_same_as_cpython(result, model, settings, seed=0)  # the form's Acceptance: auto, lenient here
    assert result["complete"]["stats"]["acceptance"] == "lenient"
    assert page.locator("#stat-sampler").inner_text() == "verified (lenient)"
    # named exactly, the AR model's own check, as CPython runs it
    exact = {**settings, "acceptance": "exact"}
    result = generate(page, PROMPT, {**exact, "seed": 0})
    assert_same_as_cpython(result, model, exact, seed=0)
    assert page.locator("#stat-sampler").inner_text() == "verified"
    # each cell's uncertainty is 1 - the probability its token was committed with, read from the
    # row that predicted it: greedy tokens are the rows' first choices, never read as probability 0
    # (the AR rows were once taken for the span's, shifted by the drafts)
    for sampler in ("verified", "ar"):
        run = {"sampler": sampler, "length": 16, "chat": True, "seed": 0}
        cells = generate(page, PROMPT, {**run, **({"acceptance": "exact"} if sampler == "verified" else {})})[
            "lastStep"
        ]["cells"]
        assert cells and all(c["uncertainty"] < 0.999 for c in cells), (
            sampler,
            [c["uncertainty"] for c in cells],
        )


def test_wasm_entropy_bounded_left_to_right_matches_cpython(browser, web_server, tiny_model, model_url):
    """The form's entropy bound and order reach the sampler in Pyodide as they do on CPython."""
    page = open_app(browser, app_url(web_server, model_url, ep="wasm"))
    settings = {
        "sampler": "bd3lm",
        "length": 12,
        "decoding": "entropy-bounded",
        "entropy_bound": 8.0,
        "order": "left-to-right",
        "temperature": 0.0,
        "chat": True,
    }
    result = generate(page, PROMPT, {**settings, "seed": 0})  # greedy: the seed is not used
    assert_same_as_cpython(result, tiny_model, settings, seed=0, chat=True)


def test_webgpu_generation_matches_cpython(webgpu_browser, web_server, tiny_model, model_url):
    """The WebGPU graph's ops (MatMulNBits, the attention formulation, the adapter branches) on
    Dawn/SwiftShader: slow, so one short block."""
    page = open_app(webgpu_browser, app_url(web_server, model_url, ep="webgpu"))
    page_state = state(page)
    assert page_state["info"]["ep"] == "webgpu", page_state["notices"]
    assert "swiftshader" in page_state["info"]["adapter"].lower()
    settings = {"sampler": "bd3lm", "length": 8, "block_size": 4, "talora": True, "dgr": True, "chat": True}
    result = generate(page, PROMPT, {**settings, "seed": 0})
    assert_same_as_cpython(result, tiny_model, settings, seed=0)
    assert page.locator("#chip-ep").inner_text().startswith("WebGPU")


@pytest.mark.slow
def test_default_model_in_the_browser_matches_cpython(browser, web_server):
    """The real default model (SmolLM2-135M-Instruct with the conversion adapter, exported for
    WebGPU once into the cache) denoises the same answer in the browser as on CPython."""
    from runtime.web_command import DEFAULT_MODEL_TARGET
    from ruvdllm.default_artifact import default_model_dir

    model_dir = default_model_dir(DEFAULT_MODEL_TARGET, progress=False)
    page = open_app(browser, app_url(web_server, web_server.mount_model("default", model_dir), ep="wasm"))
    settings = {"sampler": "bd3lm", "length": 16, "chat": True}
    result = generate(page, PROMPT, {**settings, "seed": 0})
    assert_same_as_cpython(result, model_dir, settings, seed=0)
    assert len(result["complete"]["text"].split()) >= 5  # a sentence, not noise
