"""The real default model (SmolLM2-135M-Instruct, GGUF Q4_1): the issue's Done criteria. Slow: it
needs the 98 MB checkpoint (fetched into the cache on first use) and a minute of CPU."""

from __future__ import annotations

import onnx
import pytest

from runtime import artifact

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from ruvdllm_export.default_model import default_gguf_path
    from ruvdllm_export.export import export_model

    return export_model(
        default_gguf_path(progress=False), tmp_path_factory.mktemp("default") / "model", log=None
    )


def test_default_model_export_meets_the_done_criteria(exported):
    from ruvdllm_export.export_command import DEFAULT_MODEL_MIN_AGREEMENT

    config = artifact.load_config(exported)
    validation = config.source["validation"]
    least = DEFAULT_MODEL_MIN_AGREEMENT[config.accuracy_level]  # level 4 on cpu: llama.cpp's numerics
    assert validation["top1_agreement"] >= least
    assert validation["top1_agreement_vs_checkpoint"] >= least  # Q4_1 and Q8_0 held exactly
    assert validation["paragraph_tokens"] >= 100
    assert config.source["lossy"] == []
    size_mib = sum(p.stat().st_size for p in exported.iterdir()) / 2**20
    assert size_mib <= 120


def test_default_graph_has_matmulnbits_for_every_linear_and_a_bidirectional_attention_op(exported):
    model = onnx.load(str(exported / artifact.GRAPH_NAME), load_external_data=False)
    config = artifact.load_config(exported)
    nodes = model.graph.node
    linears = [n for n in nodes if n.op_type == "MatMulNBits"]
    assert len(linears) == 4 * config.num_layers + 1  # qkv, o, gate/up, down packed; the head
    kinds = ("MultiHeadAttention", "Attention", "GroupQueryAttention")
    attention = [n for n in nodes if n.op_type in kinds]
    assert len(attention) == config.num_layers
    for node in attention:  # never causal: visibility comes from block_ids
        assert all(a.i == 0 for a in node.attribute if a.name in ("is_causal", "unidirectional", "causal"))
    float_matrices = [
        i.name
        for i in model.graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and min(i.dims) >= config.hidden_size
    ]
    assert float_matrices == []
