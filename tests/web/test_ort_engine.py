"""onnxruntime-web in Chromium (web/js/ort_engine.js): com.microsoft.MatMulNBits on the wasm EP with
two threads under cross-origin isolation, and on the WebGPU EP (SwiftShader), against CPython
onnxruntime on the same graph."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

from tests.web.conftest import open_probe, rpc
from tests.web.graphs import matmulnbits_graph

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def probe_graph(web_server):
    path = matmulnbits_graph(web_server.data_dir / "matmulnbits.onnx")
    x = np.random.default_rng(1).standard_normal((5, 96)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = dict(zip(("y", "y0", "p"), session.run(None, {"x": x}), strict=True))
    return "/data/matmulnbits.onnx", x, expected


def run_in_browser(page, ep: str, model_url: str, x: np.ndarray, threads: int = 2) -> dict:
    feeds = {"x": {"type": "float32", "dims": list(x.shape), "data": x.ravel().tolist()}}
    return rpc(page, "ort", {"ep": ep, "modelUrl": model_url, "feeds": feeds, "numThreads": threads})


def assert_matches(result: dict, expected: dict) -> None:
    for name, want in expected.items():
        got = np.asarray(result["outputs"][name]["data"], np.float32).reshape(result["outputs"][name]["dims"])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)


def test_matmulnbits_wasm_two_threads(browser, web_server, probe_graph):
    model_url, x, expected = probe_graph
    page = open_probe(browser, web_server)
    env = rpc(page, "env")
    assert env["crossOriginIsolated"], "COOP/COEP headers missing: onnxruntime-web would run one thread"
    result = run_in_browser(page, "wasm", model_url, x, threads=2)
    assert result["numThreads"] == 2  # onnxruntime-web resets this to 1 when it cannot use threads
    assert_matches(result, expected)


def test_matmulnbits_webgpu(webgpu_browser, web_server, probe_graph):
    model_url, x, expected = probe_graph
    page = open_probe(webgpu_browser, web_server)
    env = rpc(page, "env")
    assert env["webgpu"]["ok"], env["webgpu"]
    result = run_in_browser(page, "webgpu", model_url, x)
    assert_matches(result, expected)


def test_no_webgpu_adapter_without_the_flag(browser, web_server):
    page = open_probe(browser, web_server)
    assert rpc(page, "env")["webgpu"]["ok"] is False
