"""The wasm target's linears (onnx_graph/wasm_linear.py): dense weights made at load from the stored
4-bit blocks — float32 ("widened", the target's default: exactly the 4-bit graph's numbers, widened
by the runtime from the shipped blocks, runtime/widening.py) or int8 (folded at load; against their
numpy twin, and within accuracy level 4's kind of error of the 4-bit graph)."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper

from runtime import artifact, widening
from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.export import export_model
from ruvdllm_export.onnx_graph import GraphOptions, build_graph, options_for_target
from ruvdllm_export.onnx_graph.embedding import make_quantized_gather
from ruvdllm_export.onnx_graph.graph import GraphBuilder
from ruvdllm_export.onnx_graph.q8 import Q8Tensor
from ruvdllm_export.onnx_graph.wasm_linear import WidenedBlocks, make_int8_weights, quantize_per_row
from ruvdllm_export.quant.q4 import Q4Tensor
from tests.export.graph_harness import feeds, run, session, tiny_spec
from tests.export.test_onnx_graph import SEQ
from tests.fixtures.tiny_models import make_gguf_checkpoint, tiny_weights

finite = st.floats(-100, 100, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=finite))
def test_per_row_int8_error_is_at_most_half_a_step(w):
    codes, scales = quantize_per_row(w)
    assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= 127
    error = np.abs(codes.astype(np.float32) * scales[:, None] - w)
    assert np.all(error <= scales[:, None] / 2 * (1 + 1e-5) + 1e-30)


def test_the_load_time_nodes_equal_the_numpy_twin():
    """The nodes onnxruntime folds at load give exactly quantize_per_row's codes and scales
    (transposed to MatMul's [K, N]), a zero row included."""
    w = np.random.default_rng(0).standard_normal((7, 40)).astype(np.float32)
    w[3] = 0
    g = GraphBuilder("int8", 21)
    x = g.input("x", 1, [1])  # unused: a graph needs an input
    w8, scales = make_int8_weights(g, "w", g.initializer("w.float", w), 7)
    model = g.to_model(doc="int8 weights", metadata={})
    model.graph.output.extend(
        [
            helper.make_tensor_value_info(w8, TensorProto.INT8, [40, 7]),
            helper.make_tensor_value_info(scales, TensorProto.FLOAT, [7]),
        ]
    )
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got_codes, got_scales = sess.run([w8, scales], {x: np.zeros(1, np.float32)})
    codes, want_scales = quantize_per_row(w)
    np.testing.assert_array_equal(got_codes, codes.T)
    np.testing.assert_array_equal(got_scales, want_scales)


def random_blocks(rng, n: int, nb: int, k: int, kind: str) -> Q4Tensor | Q8Tensor:
    """Blocks of every form the exporter holds: 4-bit with GGUF minimums (Q4_1), 4-bit with zero
    points only, 8-bit (Q8_0 tables); float16-exact or float32 scales; K short of the last block."""
    scales = rng.standard_normal((n, nb)).astype(np.float32) * np.float32(0.02)
    if rng.random() < 0.5:
        scales = scales.astype(np.float16).astype(np.float32)  # GGUF's are float16
    if kind == "q8":
        return Q8Tensor(rng.integers(0, 256, (n, nb, 32), dtype=np.uint8), scales, k)
    mins = (rng.standard_normal((n, nb)) * 0.1).astype(np.float32) if kind == "q4_1" else None
    zero_points = rng.integers(0, 16, (n, nb), dtype=np.uint8)
    return Q4Tensor(rng.integers(0, 256, (n, nb, 16), dtype=np.uint8), scales, zero_points, mins, k)


def graph_dequantized(weight) -> np.ndarray:
    """W [N, K] as the graph's own dequantization makes it: the embedding's quantized gather over
    every row (the nodes the widened target used to fold at load), on onnxruntime."""
    g = GraphBuilder("dequantize", 21)
    x = g.input("x", 1, [1])  # unused: a graph needs an input
    rows = make_quantized_gather(g, "/w", "w", g.const(np.arange(weight.shape[0])[None]), weight)
    model = g.to_model(doc="dequantize", metadata={})
    model.graph.output.append(helper.make_tensor_value_info(rows, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([rows], {x: np.zeros(1, np.float32)})[0][0]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 9),
    st.integers(1, 4),
    st.integers(0, 31),
    st.sampled_from(["q4_1", "q4", "q8"]),
)
def test_numpy_widening_is_bit_identical_to_the_graphs_dequantization(seed, n, nb, short, kind):
    """The runtime's widening gives exactly the float32 weights the graph's dequantizing nodes give
    (same operations, same order, each rounded to float32): the widened graph computes what the
    load-time nodes computed, bit for bit."""
    rng = np.random.default_rng(seed)
    weight = random_blocks(rng, n, nb, max(1, nb * 32 - short), kind)
    blocks = WidenedBlocks()
    widened = blocks.widen(blocks.add("w.widened.T", weight))
    np.testing.assert_array_equal(widened, graph_dequantized(weight).T)


def test_the_shipped_layout_widens_to_the_in_memory_graphs_weights(tmp_path):
    """Exported with a data file, the widened weights are external data in the never-written
    `.widened.f32`; the shipped blocks are ~4-bit in size; the runtime's session over them gives the
    in-memory graph's outputs exactly."""
    from runtime.ort_backend import OrtOptions, make_session

    spec = tiny_spec("llama", True)
    weights = tiny_weights("llama", True, seed=3)
    options = options_for_target("wasm")
    in_memory = build_graph(spec, weights, options)
    shipped = build_graph(spec, weights, options, external_data=tmp_path / "model.onnx.data")
    onnx.save_model(shipped, str(tmp_path / "model.onnx"))
    index = widening.read_index(tmp_path / "model.onnx")
    assert not (tmp_path / index["floats"]).exists()
    external = {
        t.name: {e.key: e.value for e in t.external_data}
        for t in shipped.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
    }
    assert {e["name"] for e in index["tensors"]} == {
        n for n, e in external.items() if e["location"] == index["floats"]
    }
    assert len(index["tensors"]) == 4 * spec.num_layers + 1  # qkv, o, gate/up, down, the tied table
    # 4-bit linears, an 8-bit table, float16 scales: under a byte per weight (float32 is 4)
    assert index["blocks_bytes"] < index["floats_bytes"] / 4
    ids = np.random.default_rng(2).integers(0, spec.vocab_size, SEQ)
    want = run(session(in_memory), feeds(spec, options, ids, np.arange(SEQ)))
    sess, _ = make_session(tmp_path / "model.onnx", OrtOptions())
    got = run(sess, feeds(spec, options, ids, np.arange(SEQ)))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _compare_with_q4(spec, weights, seed, quantization):
    """A wasm-target graph against the 4-bit graph at accuracy level 0 (itself held to transformers
    on the same weights by test_onnx_graph_q4.py): (top-1 agreement, max |Δ logsumexp|, max
    relative Δ of the top logits)."""
    ids = np.random.default_rng(seed).integers(0, spec.vocab_size, SEQ)
    outs = {}
    for q in ("q4", quantization):
        options = GraphOptions(quantization=q, attention="matmul", accuracy_level=0)
        model = build_graph(spec, weights, options)
        outs[q] = run(session(model), feeds(spec, options, ids, np.arange(SEQ)))
    q4, other = outs["q4"], outs[quantization]
    agreement = (q4[artifact.TOPK_IDS][0, :, 0] == other[artifact.TOPK_IDS][0, :, 0]).mean()
    lse = np.abs(q4[artifact.LOGSUMEXP] - other[artifact.LOGSUMEXP]).max()
    top = q4[artifact.TOPK_LOGITS][..., 0]
    rel = np.abs(top - other[artifact.TOPK_LOGITS][..., 0]).max() / np.abs(top).max()
    return agreement, lse, rel


CASES = [("llama", False), ("llama", True), ("qwen2", False)]


@functools.cache
def int8_gemm_saturates() -> bool:
    """Whether onnxruntime's CPU MatMulInteger (uint8 x int8) saturates here: on x86 CPUs without
    VNNI, MLAS adds each pair of byte products in int16 (vpmaddubsw), so 255 x 127 x 2 clips at
    32,767. There the int8 graph's CPU numbers are not the browser's (wasm) or a VNNI CPU's, and
    its closeness bounds do not apply; the graph's structure is still tested."""
    k = 64
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "saturation_probe",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [k, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    probe = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"a": np.full((1, k), 255, np.uint8), "b": np.full((k, 1), 127, np.int8)}
    (y,) = probe.run(None, feeds)
    return int(y[0, 0]) != 255 * 127 * k


def skip_where_int8_saturates(quantization: str = "int8") -> None:
    if quantization == "int8" and int8_gemm_saturates():
        pytest.skip("onnxruntime's int8 GEMM saturates on this CPU (x86 without VNNI)")


@pytest.mark.parametrize(("arch", "tied"), CASES)
def test_widened_graph_computes_the_4bit_graphs_numbers(arch, tied):
    agreement, lse, rel = _compare_with_q4(
        tiny_spec(arch, tied), tiny_weights(arch, tied, seed=8), 4, "widened"
    )
    assert agreement == 1.0 and lse <= 1e-4 and rel <= 1e-5, (agreement, lse, rel)


@pytest.mark.parametrize(("arch", "tied"), CASES)
def test_int8_graph_stays_close_to_the_4bit_graph(arch, tied):
    skip_where_int8_saturates()
    agreement, lse, rel = _compare_with_q4(tiny_spec(arch, tied), tiny_weights(arch, tied, seed=8), 4, "int8")
    # int8 activations per tensor: the tiny random models have no outlier channels (SmolLM2 has)
    assert agreement >= 0.9 and rel <= 0.05, (agreement, lse, rel)


@pytest.mark.parametrize("quantization", ["widened", "int8"])
def test_gguf_q4_1_blocks_with_a_q8_0_table(tmp_path, quantization):
    """GGUF Q4_1's block minimums and a Q8_0 tied table decode in the load-time nodes (the
    embedding's own gather over every row)."""
    skip_where_int8_saturates(quantization)
    path = make_gguf_checkpoint(tmp_path / "m.gguf", "llama", "Q4_1", tied=True, embed_qtype="Q8_0")
    loaded = load_checkpoint(path)
    agreement, lse, rel = _compare_with_q4(loaded.spec, dict(loaded.weights), 5, quantization)
    limit = 1e-5 if quantization == "widened" else 0.05
    assert agreement >= 0.9 and rel <= limit, (agreement, lse, rel)


def test_no_matmulnbits_and_the_int8_weights_are_made_at_load(tmp_path):
    quantization = "int8"
    spec = tiny_spec("llama", True)
    options = GraphOptions(quantization=quantization, attention="matmul", adapter_slots=0)
    model = build_graph(spec, tiny_weights("llama", True, seed=1), options)
    assert "MatMulNBits" not in [n.op_type for n in model.graph.node]
    big = [i for i in model.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.INT8)]
    assert all(np.prod(i.dims) < spec.hidden_size * spec.hidden_size for i in big)  # 4-bit on disk
    # after onnxruntime's load-time folding the dense weights are constants, one per matmul
    path = tmp_path / "optimized.onnx"
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    folded = onnx.load(str(path))
    assert not {n.op_type for n in folded.graph.node} & {"Round", "Clip", "ReduceMax", "Abs"}
    dtype = TensorProto.INT8
    dense = [
        i
        for i in folded.graph.initializer
        if i.data_type == dtype and len(i.dims) == 2 and np.prod(i.dims) >= spec.hidden_size**2
    ]
    assert len(dense) == 4 * spec.num_layers + 1, [i.name for i in dense]  # qkv, o, gate/up, down, head


def test_wasm_export_records_its_target_and_validates(tmp_path):
    """The default model's layout (Q4_1 linears, Q8_0 tied table) exported for wasm: widened, the
    config names the target, validation passed at level 0's tolerance, gzip copies for the browser."""
    assert options_for_target("wasm").quantization == "widened"
    path = make_gguf_checkpoint(tmp_path / "m.gguf", "llama", "Q4_1", tied=True, embed_qtype="Q8_0")
    out = export_model(path, tmp_path / "model", target="wasm", log=None)
    config = artifact.load_config(out)
    assert config.targets == ("wasm",) and config.quantization == "widened"
    assert "wasm" in config.source["not_validated_here"]
    assert config.source["validation"]["top1_agreement_vs_checkpoint"] == 1.0
    assert list(out.glob("*.gz"))
