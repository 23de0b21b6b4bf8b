"""The wasm target's widening in the browser (web/js/widen.js) against the runtime's numpy twin
(runtime/widening.py): the same float32 bits for every block form the exporter writes — 4-bit with
GGUF minimums and zero points, 4-bit with zero points only, 8-bit tables, float16 and float32
scales, a last block cut short — read from a blocks file served over HTTP as the page reads it."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from runtime import widening
from ruvdllm_export.onnx_graph.wasm_linear import WidenedBlocks
from tests.export.test_onnx_graph_wasm_linear import random_blocks
from tests.web.conftest import open_probe

pytestmark = pytest.mark.browser

WIDEN_IN_PAGE = """async ([index, blocks]) => {
  const { widenAll } = await import('/js/widen.js');
  const [indexBytes, blockBytes] = await Promise.all([index, blocks].map((u) => fetch(u).then((r) => r.arrayBuffer())));
  const ticks = [];
  const file = await widenAll(JSON.parse(new TextDecoder().decode(indexBytes)), new Uint8Array(blockBytes),
    async (done, total) => ticks.push([done, total]));
  let text = '';
  for (let i = 0; i < file.data.length; i += 0x8000) text += String.fromCharCode(...file.data.subarray(i, i + 0x8000));
  return { path: file.path, data: btoa(text), ticks };
}"""


def test_js_widening_is_bit_identical_to_numpy(browser, web_server):
    rng = np.random.default_rng(11)
    graph = web_server.data_dir / "widen" / "model.onnx"
    graph.parent.mkdir(exist_ok=True)
    blocks = WidenedBlocks(graph)
    shapes = [(5, 2, 64, "q4_1"), (7, 3, 70, "q4"), (6, 2, 50, "q8"), (3, 1, 1, "q4_1"), (33, 4, 128, "q4")]
    for i, (n, nb, k, kind) in enumerate(shapes):
        blocks.add(f"w{i}.widened.T", random_blocks(rng, n, nb, k, kind))
    blocks.close()
    index, floats = widening.widen_all(graph)
    assert {e["scales"][2] for e in index["tensors"]} == {"float16", "float32"}  # both forms seen
    assert any(e["zero_points"] for e in index["tensors"]) and any(e["mins"] for e in index["tensors"])

    page = open_probe(browser, web_server)
    got = page.evaluate(
        WIDEN_IN_PAGE, ["/data/widen/model.onnx" + widening.INDEX_SUFFIX, "/data/widen/" + index["blocks"]]
    )
    assert got["path"] == index["floats"] and got["ticks"][-1] == [len(shapes), len(shapes)]
    js = np.frombuffer(base64.b64decode(got["data"]), np.float32)
    np.testing.assert_array_equal(js.view(np.uint32), floats.view(np.uint32))  # bits, -0.0 included
