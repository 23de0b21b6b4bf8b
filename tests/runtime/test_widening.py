"""The wasm target's widening on CPython (runtime/widening.py): a damaged blocks file or index is a
one-line error naming the file, not a crash inside onnxruntime. (Exactness: the export's tests,
tests/export/test_onnx_graph_wasm_linear.py; the browser's twin: tests/web/test_widen.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime import widening
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.onnx_graph.wasm_linear import WidenedBlocks
from tests.export.test_onnx_graph_wasm_linear import random_blocks


@pytest.fixture
def graph(tmp_path):
    path = tmp_path / "model.onnx"
    blocks = WidenedBlocks(path)
    blocks.add("w.widened.T", random_blocks(np.random.default_rng(0), 4, 2, 60, "q4_1"))
    blocks.close()
    return path


def test_widens_into_one_float_file(graph):
    index, floats = widening.widen_all(graph)
    assert floats.nbytes == index["floats_bytes"] == 4 * 60 * 4
    assert not widening.has_widened(graph.with_name("other.onnx"))


def test_a_truncated_blocks_file_is_one_line(graph):
    blocks = graph.with_name(graph.name + widening.BLOCKS_SUFFIX)
    blocks.write_bytes(blocks.read_bytes()[:-7])
    with pytest.raises(RuvdllmError, match=r"model\.onnx\.widened\.bin: \d+ bytes, the index says \d+$"):
        widening.widen_all(graph)


def test_a_missing_blocks_file_is_one_line(graph):
    graph.with_name(graph.name + widening.BLOCKS_SUFFIX).unlink()
    with pytest.raises(RuvdllmError, match=r"model\.onnx\.widened\.bin: unreadable"):
        widening.widen_all(graph)


@pytest.mark.parametrize("text", ["{not json", json.dumps({"format": 99})])
def test_a_bad_index_is_one_line(graph, text):
    widening.index_path(graph).write_text(text)
    with pytest.raises(RuvdllmError) as caught:
        widening.read_index(graph)
    assert "model.onnx.widened.json" in str(caught.value) and "\n" not in str(caught.value)
