"""Weights streamed into the external data file while the graph is built write the very files
onnx.save_model(save_as_external_data=True) writes from the whole in-memory graph."""

from __future__ import annotations

import onnx
import pytest

from ruvdllm_export.onnx_graph import GraphOptions, build_graph, prepare_weights
from tests.fixtures.tiny_models import tiny_spec, tiny_weights


@pytest.mark.parametrize(
    ("arch", "tied", "quantization"), [("llama", True, "q4"), ("qwen2", False, "q4"), ("qwen3", True, "fp32")]
)
def test_streamed_external_data_is_what_onnx_save_writes(tmp_path, arch, tied, quantization):
    spec = tiny_spec(arch, tied)
    options = GraphOptions(quantization=quantization, adapter_slots=2, adapter_rank=2)
    weights = prepare_weights(spec, tiny_weights(arch, tied, seed=3), options)

    whole = build_graph(spec, weights, options)
    (tmp_path / "saved").mkdir()
    onnx.save_model(
        whole,
        str(tmp_path / "saved" / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    (tmp_path / "streamed").mkdir()
    streamed = build_graph(spec, weights, options, external_data=tmp_path / "streamed" / "model.onnx.data")
    assert not any(t.HasField("raw_data") and len(t.raw_data) >= 1024 for t in streamed.graph.initializer)
    onnx.save_model(streamed, str(tmp_path / "streamed" / "model.onnx"))

    for name in ("model.onnx", "model.onnx.data"):
        assert (tmp_path / "saved" / name).read_bytes() == (tmp_path / "streamed" / name).read_bytes(), name
