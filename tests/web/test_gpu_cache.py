"""The key/value cache on the GPU (web/js/gpu_cache.js) in headless Chromium on SwiftShader's WebGPU:
the slice on the device equals the slice in JavaScript memory, and a WebGPU generation moves no
key/value byte between the GPU and JavaScript, holds a bounded number of GPU tensors however many
steps it takes, and still gives the CPython runtime's tokens."""

from __future__ import annotations

import numpy as np
import pytest

from tests.web.app import app_url, generate, open_app, state
from tests.web.artifacts import tiny_web_model
from tests.web.conftest import open_probe, rpc
from tests.web.test_app import PROMPT, assert_same_as_cpython

pytestmark = pytest.mark.browser

SAMPLER_OUTPUTS = 5  # topk_ids, topk_logits, logsumexp, entropy, query: read back every forward


def slice_cases(rng: np.random.Generator) -> list[dict]:
    """Caches of several shapes (odd head sizes, one position, one head) and every edge of keep."""
    cases = []
    for heads, positions, head_dim in [(2, 5, 4), (3, 7, 3), (1, 1, 8), (4, 9, 16)]:
        for keep in sorted({0, 1, positions // 2, positions - 1, positions}):
            data = rng.standard_normal(heads * positions * head_dim).astype(np.float32)
            cases.append({"dims": [1, heads, positions, head_dim], "data": data.tolist(), "keep": keep})
    return cases


def test_slice_on_the_gpu_equals_the_slice_in_memory(webgpu_browser, web_server):
    page = open_probe(webgpu_browser, web_server)
    cases = slice_cases(np.random.default_rng(0))
    results = rpc(page, "sliceCache", {"cases": cases})
    for case, got in zip(cases, results, strict=True):
        batch, heads, positions, head_dim = case["dims"]
        want = np.asarray(case["data"], np.float32).reshape(case["dims"])[:, :, : case["keep"], :]
        assert got["dims"] == [batch, heads, case["keep"], head_dim]
        assert got["location"] == ("gpu-buffer" if case["keep"] else "cpu")
        np.testing.assert_array_equal(np.asarray(got["gpu"], np.float32), want.ravel())  # a copy: exact
        np.testing.assert_array_equal(np.asarray(got["cpu"], np.float32), want.ravel())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_web_model(tmp_path_factory.mktemp("gpu-cache-models"))


def test_webgpu_keeps_the_cache_on_the_gpu_across_blocks(webgpu_browser, web_server, tiny_model):
    """Three blocks after the prompt, so commits slice the cache on the device between forwards;
    then a longer run on the same page: the GPU tensors held stay the same in number."""
    page = open_app(
        webgpu_browser, app_url(web_server, web_server.mount_model("tiny", tiny_model), ep="webgpu")
    )
    info = state(page)["info"]
    assert info["ep"] == "webgpu", state(page)["notices"]
    layers = info["model"]["layers"]

    held = []
    for length in (12, 20):
        settings = {
            "sampler": "bd3lm",
            "length": length,
            "block_size": 4,
            "talora": True,
            "dgr": True,
            "chat": True,
        }
        result = generate(page, PROMPT, {**settings, "seed": 0})
        assert_same_as_cpython(result, tiny_model, settings, seed=0)
        stats = result["complete"]["stats"]
        moved, device = stats["transfers"], stats["gpuTraffic"]
        forwards = moved["forwards"]
        assert forwards >= length  # one forward per token at least
        # Not one key/value byte crossed, either way, by the runner's count of what it fed and got:
        assert moved["kvInBytes"] == 0 and moved["kvOutBytes"] == 0, moved
        # what came in is the chunk (ids, positions, block ids, adapter weights: the banks were
        # uploaded once), what came back the sampler's outputs (top-k, logsumexp, entropy, query),
        assert 0 < moved["inBytes"] < 1024 * forwards, moved
        assert moved["outBytes"] > 0, moved
        # and by the device's own count of what it read back, onnxruntime's internal copies
        # included: those outputs and no more, up to 16-byte buffer padding on each.
        assert device["readBytes"] <= moved["outBytes"] + 16 * SAMPLER_OUTPUTS * forwards, (device, moved)
        held.append(stats["gpuTensors"])

    # After a run: the adapter banks (uploaded once), the cache (key and value per layer) and the
    # last forward's present outputs. At a commit the new slices briefly sit beside the old ones.
    # Neither grows with the number of steps (the second run takes more).
    assert held[0]["live"] == held[1]["live"] >= 4 * layers
    assert held[0]["peak"] == held[1]["peak"] == held[0]["live"] + 2 * layers
