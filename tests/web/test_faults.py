"""Bad input and faults in the client: damaged or truncated model files, no WebGPU or only a
software one, an interrupt, a prompt beyond the context, a storage quota too small for the model,
and no server at all after the first visit."""

from __future__ import annotations

import threading

import pytest

from runtime.web_command import build_site, default_web_dir, make_server
from tests.web.app import app_url, generate, open_app, state
from tests.web.artifacts import copy_model, tiny_web_model

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_web_model(tmp_path_factory.mktemp("web-fault-models"))


@pytest.fixture(scope="module")
def model_url(web_server, tiny_model):
    return web_server.mount_model("tiny-faults", tiny_model)


def test_no_webgpu_falls_back_to_wasm_with_a_notice(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url, ep="auto"))
    page_state = state(page)
    assert page_state["ready"] and page_state["info"]["ep"] == "wasm"
    assert any("WebGPU is unavailable" in n["text"] for n in page_state["notices"])
    assert page.locator(".notice.warning").first.is_visible()


def test_a_software_webgpu_adapter_is_passed_over_for_wasm(webgpu_browser, web_server, model_url):
    """SwiftShader (a CPU rasteriser) is a WebGPU adapter, but WebAssembly is far faster on the
    CPU: "auto" picks wasm and says why; WebGPU asked for by name is still given."""
    page = open_app(webgpu_browser, app_url(web_server, model_url, ep="auto"))
    page_state = state(page)
    assert page_state["ready"] and page_state["info"]["ep"] == "wasm", page_state["notices"]
    assert any("software" in n["text"] and "swiftshader" in n["text"].lower() for n in page_state["notices"])


def test_corrupt_model_file_offers_a_download_that_recovers(browser, web_server, tiny_model, tmp_path):
    damaged = copy_model(tiny_model, tmp_path / "damaged")
    graph = damaged / "model.onnx"
    original = graph.read_bytes()
    graph.write_bytes(original[:1000] + bytes([original[1000] ^ 0xFF]) + original[1001:])  # same size
    url = web_server.mount_model("damaged", damaged)

    page = open_app(browser, app_url(web_server, url))
    error = state(page)["error"]
    assert error["code"] == "corrupt" and "model.onnx" in error["message"]
    assert page.locator("#error").is_visible() and page.locator("#redownload").is_visible()

    graph.write_bytes(original)  # the server has a good copy again: the offered download succeeds
    page.click("#redownload")
    page.wait_for_function(
        "window.ruvdllm.ready || (window.ruvdllm.error && window.ruvdllm.error.code !== 'corrupt')"
    )
    assert state(page)["ready"], state(page)["error"]
    assert page.locator("#error").is_hidden()


def test_truncated_model_file_is_named(browser, web_server, tiny_model, tmp_path):
    truncated = copy_model(tiny_model, tmp_path / "truncated")
    graph = truncated / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    page = open_app(browser, app_url(web_server, web_server.mount_model("truncated", truncated)))
    error = state(page)["error"]
    assert error["code"] == "truncated" and error["recover"] == "redownload"
    assert "model.onnx" in page.locator("#error-text").inner_text()


def test_damaged_cached_file_is_downloaded_again(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    assert state(page)["info"]["cache"]["downloadedBytes"] > 0
    # Damage the cached graph in Cache Storage, as a disk error or an old browser bug would.
    damaged = page.evaluate(
        """async () => {
            const cache = await caches.open('ruvdllm-models-v1');
            const key = (await cache.keys()).map((r) => r.url).find((u) => u.includes('/model.onnx?'));
            await cache.put(key, new Response(new Uint8Array([1, 2, 3])));
            return key;
        }"""
    )
    assert damaged
    page.reload()
    page.wait_for_function("window.ruvdllm && (window.ruvdllm.ready || window.ruvdllm.error)")
    page_state = state(page)
    assert page_state["ready"], page_state["error"]
    assert any("damaged" in n["text"] for n in page_state["notices"])


def test_warm_start_reads_the_cache(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    cold = state(page)["info"]["cache"]
    page.reload()
    page.wait_for_function("window.ruvdllm && window.ruvdllm.ready")
    warm = state(page)["info"]["cache"]
    assert cold["downloadedBytes"] > 0 and cold["cachedBytes"] == 0
    assert warm["downloadedBytes"] == 0 and warm["cachedBytes"] == cold["downloadedBytes"]
    assert page.locator("#chip-cache").inner_text() == "from cache"


def test_interrupt_stops_within_one_step(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    page.fill("#prompt", "Count slowly.")
    page.select_option("#sampler", "mdlm")
    page.fill("#length", "180")  # 180 steps of 220 positions: seconds of work
    page.click("#generate")
    page.wait_for_function("window.ruvdllm.steps >= 3")
    assert page.locator("#cells .cell.masked").count() > 100  # the live view: most positions still masked
    page.click("#stop")
    page.wait_for_function("window.ruvdllm.complete || window.ruvdllm.error")
    complete = state(page)["complete"]
    assert complete["interrupted"]
    assert complete["stepsAfterInterrupt"] <= 1
    assert complete["stats"]["steps"] < 180
    assert page.locator("#step-label").inner_text() == "stopped"
    # the engine is usable again
    result = generate(page, "Hello", {"sampler": "bd3lm", "length": 8})
    assert result["complete"] and not result["complete"]["interrupted"]


def test_prompt_beyond_the_context_is_a_clear_message(browser, web_server, model_url):
    page = open_app(browser, app_url(web_server, model_url))
    result = generate(page, "word " * 400, {"length": 16, "chat": False})
    assert result["complete"] is None
    assert result["error"]["code"] == "settings"
    assert "exceed the model's context of 256" in result["error"]["message"]
    assert "exceed the model's context" in page.locator("#error-text").inner_text()
    assert page.locator("#generate").is_enabled()


def test_storage_quota_too_small_keeps_the_model_in_memory(browser, web_server, model_url):
    page = browser.new_page()
    cdp = browser.context.new_cdp_session(page)
    origin = web_server.url.rstrip("/")
    cdp.send("Storage.overrideQuotaForOrigin", {"origin": origin, "quotaSize": 64 * 1024})
    page.goto(app_url(web_server, model_url))
    page.wait_for_function("window.ruvdllm && (window.ruvdllm.ready || window.ruvdllm.error)")
    page_state = state(page)
    assert page_state["ready"], page_state["error"]
    assert page_state["info"]["cache"]["memoryOnly"]
    assert any("memory only" in n["text"] for n in page_state["notices"])
    assert page.locator("#chip-cache").inner_text() == "in memory only"
    assert generate(page, "Hi", {"length": 8})["complete"]


def test_works_offline_after_the_first_visit(browser, tiny_model):
    """Its own server, stopped after the first visit: the page, the engine and the model all come
    from the browser's caches."""
    site = build_site(default_web_dir(), tiny_model)
    server = make_server(site, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/?ep=wasm"
    try:
        page = open_app(browser, url)
        assert state(page)["ready"], state(page)["error"]
    finally:
        server.shutdown()
        server.server_close()
    page.reload()
    page.wait_for_function("window.ruvdllm && (window.ruvdllm.ready || window.ruvdllm.error)")
    page_state = state(page)
    assert page_state["ready"], page_state["error"]
    assert page_state["info"]["cache"]["offline"] and page_state["info"]["cache"]["downloadedBytes"] == 0
    assert generate(page, "Hello offline", {"length": 8})["complete"]
