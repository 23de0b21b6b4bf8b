"""The 4-bit graph: MatMulNBits linears (zero points or exact block mins), quantized token tables
shared with a tied head, checked against transformers running the very weights the graph holds."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from runtime import artifact
from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.onnx_graph import GraphOptions, build_graph, graph_weights_as_float, prepare_weights
from ruvdllm_export.onnx_graph.q8 import SplitQ8Tensor
from ruvdllm_export.quant.q4 import Q4Tensor
from ruvdllm_export.spec import EMBED, linear_weight
from tests.export.graph_harness import feeds, run, session, tiny_spec
from tests.export.test_onnx_graph import SEQ, assert_matches_logits, hf_model, hf_outputs
from tests.fixtures.tiny_models import make_gguf_checkpoint, tiny_weights

pytest.importorskip("torch")


def q4_vs_transformers(spec, weights, options, arch, seed=0, atol=2e-4):
    model = build_graph(spec, weights, options)
    onnx.checker.check_model(model)
    held = graph_weights_as_float(prepare_weights(spec, weights, options))
    ids = np.random.default_rng(seed).integers(0, spec.vocab_size, SEQ)
    out = run(session(model), feeds(spec, options, ids, np.arange(SEQ)))
    logits, _ = hf_outputs(hf_model(arch, spec.tie_word_embeddings, held), ids)
    assert_matches_logits(out, logits, options.top_k, atol=atol)
    return model


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_q4_graph_matches_transformers_on_the_dequantized_weights(arch, tied):
    spec = tiny_spec(arch, tied)
    options = GraphOptions(quantization="q4", attention="mha", accuracy_level=0)
    q4_vs_transformers(spec, tiny_weights(arch, tied, seed=6), options, arch)


@pytest.mark.parametrize(
    ("qtype", "embed_qtype", "table"),
    [("Q4_1", "Q8_0", SplitQ8Tensor), ("Q4_1", None, Q4Tensor), ("Q4_0", "Q4_0", Q4Tensor)],
    ids=["q4_1-mins+q8_0-table", "q4_1-table-with-mins", "q4_0"],
)
def test_exact_gguf_blocks_run_as_they_are(tmp_path, qtype, embed_qtype, table):
    """GGUF Q4_1 (block mins → zero points 0 + block-sum branch), Q4_0, and their tables."""
    path = make_gguf_checkpoint(tmp_path / "m.gguf", "llama", qtype, tied=True, embed_qtype=embed_qtype)
    loaded = load_checkpoint(path)
    options = GraphOptions(quantization="q4", attention="matmul", accuracy_level=0)
    weights = dict(loaded.weights)  # read once: the loader's weights are read afresh on each access
    prepared = prepare_weights(loaded.spec, weights, options)
    q_proj = linear_weight(0, "q_proj")
    assert prepared[q_proj] is weights[q_proj]  # exact blocks kept, never re-quantized
    assert isinstance(prepared[EMBED], table)
    model = q4_vs_transformers(loaded.spec, loaded.weights, options, "llama")
    side = [n for n in model.graph.node if n.name.endswith(("/side/MatMul_b", "/block_mins/MatMul"))]
    if qtype == "Q4_1":
        # the block-min correction once per matmul: qkv, o, gate/up packed, down (+ the head)
        assert len(side) >= 4 * loaded.spec.num_layers
    else:
        assert not side


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "one-per-linear"])
def test_every_linear_is_matmulnbits_and_no_float_weight_matrix_remains(packed):
    spec = tiny_spec("qwen2", False)
    options = GraphOptions(quantization="q4", pack_linears=packed)
    model = build_graph(spec, tiny_weights("qwen2", False, seed=1), options)
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    per_layer = 4 if packed else 7  # packed: qkv, o, gate/up, down
    assert len(nbits) == per_layer * spec.num_layers + 1  # + LM head
    first = "qkv_proj" if packed else "q_proj"
    assert {n.name for n in nbits} >= {
        f"/model/layers.{layer}/attn/{first}/MatMulNBits" for layer in range(2)
    }
    matrix_shapes = {tuple(shape) for shape in _linear_shapes(spec)}
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
            assert tuple(init.dims) not in matrix_shapes, init.name
            assert tuple(init.dims)[::-1] not in matrix_shapes, init.name


def _linear_shapes(spec):
    from ruvdllm_export.spec import expected_shapes

    return [s for n, s in expected_shapes(spec).items() if len(s) == 2]


def test_tied_table_is_stored_once_and_read_by_gather_and_head():
    spec = tiny_spec("llama", True)
    model = build_graph(
        spec, tiny_weights("llama", True, seed=2), GraphOptions(quantization="q4", table_bits=4)
    )
    table = [i.name for i in model.graph.initializer if i.name.startswith(EMBED)]
    assert f"{EMBED}.q4" in table
    readers = [n.op_type for n in model.graph.node if f"{EMBED}.q4" in n.input]
    assert sorted(readers) == ["Gather", "MatMulNBits"]


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_embedding_rows_equal_the_dequantized_table(bits):
    """An untied table at 4 bits (float source: packed zero points, split in the graph) or 8 bits
    (as two exact 4-bit halves at accuracy level 0): the in-graph dequantizing Gather and the head
    must give the held table's numbers, end to end."""
    spec = tiny_spec("llama", False)
    options = GraphOptions(quantization="q4", attention="matmul", accuracy_level=0, table_bits=bits)
    prepared = prepare_weights(spec, tiny_weights("llama", False, seed=7), options)
    assert isinstance(prepared[EMBED], Q4Tensor if bits == 4 else SplitQ8Tensor)
    q4_vs_transformers(spec, tiny_weights("llama", False, seed=7), options, "llama", seed=3)


def test_q8_table_runs_as_bits_8_with_int8_activations():
    """At accuracy level 4 the 8-bit table is one MatMulNBits bits=8 (its fast int8 kernel) and must
    agree with the exact split form."""
    spec = tiny_spec("llama", True)
    weights = tiny_weights("llama", True, seed=9)
    ids = np.random.default_rng(5).integers(0, spec.vocab_size, SEQ)
    outs = {}
    for level in (0, 4):
        options = GraphOptions(quantization="q4", accuracy_level=level)
        model = build_graph(spec, weights, options)
        head = next(n for n in model.graph.node if n.name == "/model/lm_head/MatMulNBits")
        assert {a.name: a.i for a in head.attribute}["bits"] == (8 if level == 4 else 4)
        outs[level] = run(session(model), feeds(spec, options, ids, np.arange(SEQ)))
    # int8 activations: ~0.5% relative
    np.testing.assert_allclose(outs[4][artifact.LOGSUMEXP], outs[0][artifact.LOGSUMEXP], rtol=0.01, atol=0.05)
    assert (outs[4][artifact.TOPK_IDS][0, :, 0] == outs[0][artifact.TOPK_IDS][0, :, 0]).mean() >= 0.9


def test_accuracy_level_4_stays_close_to_level_0():
    spec = tiny_spec("llama", False)
    weights = tiny_weights("llama", False, seed=8)
    ids = np.random.default_rng(4).integers(0, spec.vocab_size, SEQ)
    outs = {}
    for level in (0, 4):
        options = GraphOptions(quantization="q4", accuracy_level=level)
        outs[level] = run(
            session(build_graph(spec, weights, options)), feeds(spec, options, ids, np.arange(SEQ))
        )
    np.testing.assert_allclose(outs[4][artifact.LOGSUMEXP], outs[0][artifact.LOGSUMEXP], atol=0.05)
    assert (outs[4][artifact.TOPK_IDS][0, :, 0] == outs[0][artifact.TOPK_IDS][0, :, 0]).mean() >= 0.9
