"""The AR graph's build (ruvdllm_export/onnx_graph/ar_graph.py): it shares the full graph's data
file byte for byte, or refuses, and only switchable models of shareable linears get one. (Its
decoding is golden-tested against the torch AR model in tests/test_golden_verified.py.)"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ruvdllm_export.onnx_graph import GraphOptions, StaticLora, build_graph, options_for_target
from ruvdllm_export.onnx_graph.ar_graph import (
    SharedExternalData,
    build_ar_graph,
    external_index,
    wants_ar_graph,
)
from tests.export.graph_harness import tiny_spec
from tests.fixtures.tiny_models import random_conversion_adapter, tiny_weights


def test_only_switchable_models_of_shareable_linears_get_an_ar_graph():
    for target in ("cpu", "cuda"):
        assert wants_ar_graph(options_for_target(target), True, target)
    assert not wants_ar_graph(options_for_target("cpu"), False, "cpu")
    assert not wants_ar_graph(options_for_target("cpu", adapter_switch=False), True, "cpu")
    for target in ("webgpu", "wasm"):  # the browser runs the full graph
        assert not wants_ar_graph(options_for_target(target), True, target)


def test_the_ar_graph_points_into_the_full_graphs_data_file_and_refuses_other_bytes(tmp_path):
    spec, weights = tiny_spec("llama", False), tiny_weights("llama", False, seed=3)
    options = GraphOptions(adapter_slots=2, adapter_rank=2)
    lora = {n: StaticLora(a=a, b=b) for n, (a, b) in random_conversion_adapter(spec).items()}
    data = tmp_path / "model.onnx.data"
    full = build_graph(spec, weights, options, lora=lora, external_data=data)
    size = data.stat().st_size
    ar = build_ar_graph(spec, weights, options, "cpu", SharedExternalData(data, external_index(full)))
    assert data.stat().st_size == size  # nothing written
    full_places = external_index(full)
    ar_places = external_index(ar)
    assert ar_places and all(full_places[name] == place for name, place in ar_places.items())
    assert len(ar.graph.node) < len(full.graph.node)
    # weights that are not the full graph's, byte for byte: refused, nothing shipped
    changed = dict(weights)
    name = next(n for n in weights if n.endswith("o_proj.weight"))
    noise = np.random.default_rng(0).standard_normal(weights[name].shape).astype(np.float32)
    changed[name] = np.asarray(weights[name], np.float32) + noise
    with pytest.raises(ValueError, match="not in model.onnx.data with the same bytes"):
        build_ar_graph(spec, changed, options, "cpu", SharedExternalData(data, external_index(full)))
    assert isinstance(ar, onnx.ModelProto)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_the_cpu_ar_graph_attends_over_a_key_value_buffer_and_the_cuda_one_keeps_its_attention(arch):
    """cpu: one causal GroupQueryAttention per layer over the buffer the runtime binds as past and
    present (seqlens_k / total_sequence_length in, no block ids, no visibility bias), as the full
    graph does with its bias; cuda, whose GroupQueryAttention takes float16 only: the full graph's
    own attention."""
    spec, weights = tiny_spec(arch, False), tiny_weights(arch, False, seed=1)
    lora = {n: StaticLora(a=a, b=b) for n, (a, b) in random_conversion_adapter(spec).items()}
    for target in ("cpu", "cuda"):
        options = options_for_target(target, adapter_slots=2, adapter_rank=2)
        full = build_graph(spec, weights, options, lora=lora)
        ar = build_ar_graph(spec, weights, options, target)
        inputs = {i.name for i in ar.graph.input}
        ops = [n.op_type for n in ar.graph.node]
        if target == "cpu":
            # the full graph attends over the buffer too, with its block visibility as a bias
            full_inputs = {i.name for i in full.graph.input}
            assert {"seqlens_k", "total_sequence_length", "block_ids"} <= full_inputs
            full_gqa = [n for n in full.graph.node if n.op_type == "GroupQueryAttention"]
            assert len(full_gqa) == spec.num_layers and all(len(n.input) == 11 for n in full_gqa)
            assert {"seqlens_k", "total_sequence_length"} <= inputs and "block_ids" not in inputs
            gqa = [n for n in ar.graph.node if n.op_type == "GroupQueryAttention"]
            assert len(gqa) == spec.num_layers
            assert all(a.name != "causal" for n in gqa for a in n.attribute)  # its default: causal
            assert all(len(n.input) == 10 for n in gqa)  # no attention_bias input
            assert not any("attn_bias" in n.name for n in ar.graph.node)
        else:
            assert "block_ids" in inputs and "seqlens_k" not in inputs
            assert ops.count("MultiHeadAttention") == spec.num_layers
            assert sorted(set(ops) & {"MultiHeadAttention", "GroupQueryAttention", "Attention"}) == sorted(
                set(n.op_type for n in full.graph.node)
                & {"MultiHeadAttention", "GroupQueryAttention", "Attention"}
            )
