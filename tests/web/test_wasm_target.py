"""The wasm target in the browser (linears widened at load, ruvdllm_export/onnx_graph/wasm_linear.py): the page loads
the model's wasm variant when it runs on WebAssembly and generates CPython's tokens with it; a graph
built for another target than the EP asked for fails at load in one line naming the target."""

from __future__ import annotations

import pytest

from tests.web.app import app_url, generate, open_app, state
from tests.web.artifacts import tiny_web_model
from tests.web.test_app import PROMPT, assert_same_as_cpython

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def models(tmp_path_factory, web_server):
    """The tiny model exported for webgpu and for wasm (same checkpoint, each with the bank)."""
    directory = tmp_path_factory.mktemp("wasm-target-models")
    webgpu = tiny_web_model(directory, target="webgpu")
    wasm = tiny_web_model(directory, target="wasm")
    return {
        "webgpu": (webgpu, web_server.mount_model("tiny-webgpu", webgpu)),
        "wasm": (wasm, web_server.mount_model("tiny-wasm", wasm)),
    }


def test_on_wasm_the_page_loads_the_wasm_variant_and_matches_cpython(browser, web_server, models):
    wasm_dir, wasm_url = models["wasm"]
    url = app_url(web_server, models["webgpu"][1], ep="wasm", threads=2, **{"wasm-model": wasm_url})
    page = open_app(browser, url)
    info = state(page)["info"]
    assert info is not None, state(page)["error"]
    assert info["ep"] == "wasm" and info["model"]["targets"] == ["wasm"]
    settings = {"sampler": "bd3lm", "length": 16, "block_size": 8, "talora": True, "dgr": True, "chat": True}
    result = generate(page, PROMPT, {**settings, "seed": 0})
    assert_same_as_cpython(result, wasm_dir, settings, seed=0)


def test_a_wasm_graph_asked_to_run_on_webgpu_fails_in_one_line(webgpu_browser, web_server, models):
    page = open_app(webgpu_browser, app_url(web_server, models["wasm"][1], ep="webgpu"))
    error = state(page)["error"]
    assert error is not None and error["code"] == "wrong-target", error
    assert error["message"].startswith(
        "model.onnx: built for target wasm, not webgpu: export it with --target webgpu"
    )
    assert "\n" not in error["message"]
