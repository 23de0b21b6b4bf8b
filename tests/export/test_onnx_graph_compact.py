"""Weights stored compactly (float16 + Cast, pieces joined by Concat) reach the forward unchanged,
and the nodes that assemble them are counted as folded at load, not per forward."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ruvdllm_export.onnx_graph.graph import (
    COMPACT_MIN_SIZE,
    FLOAT,
    GraphBuilder,
    forward_nodes,
    load_time_nodes,
)

N = COMPACT_MIN_SIZE  # large enough to be stored compactly when exact


def _run(g: GraphBuilder, x: np.ndarray) -> np.ndarray:
    model = g.to_model()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _graph_adding(weight: np.ndarray) -> GraphBuilder:
    g = GraphBuilder("compact", 17)
    x = g.input("x", FLOAT, [weight.size])
    w = g.float_initializer("w", weight)
    g.op("Add", [x, w], "/model/Add", outputs=["y"])
    g.output("y", FLOAT, [weight.size])
    return g


@settings(max_examples=25, deadline=None)
@given(
    arrays(np.float16, N, elements=st.floats(-60000, 60000, width=16)),
    st.booleans(),
)
def test_a_float_weight_reaches_the_forward_bit_for_bit(half, widen_past_float16):
    weight = half.astype(np.float32)
    if widen_past_float16:  # one value float16 cannot hold: the whole weight stays float32
        weight[0] = np.float32(1 + 2**-20)
    g = _graph_adding(weight)
    stored = {t.name: t.data_type for t in g.initializers}
    assert ("w.f16" in stored) != widen_past_float16
    y = _run(g, np.zeros(N, np.float32))
    assert np.array_equal(y, weight)


def test_small_weights_stay_float32():
    g = _graph_adding(np.ones(8, np.float32))
    assert [t.name for t in g.initializers] == ["w"]


def test_nodes_over_initializers_are_folded_at_load_and_not_counted_per_forward():
    g = GraphBuilder("compact", 17)
    x = g.input("x", FLOAT, [1, 2 * N])
    a = g.float_initializer("a", np.ones(N, np.float32))  # Cast (load time)
    b = g.float_initializer("b", np.zeros(N, np.float32))  # Cast (load time)
    joined = g.op("Concat", [a, b], "/load/ab/Concat", outputs=["ab"], axis=0)  # load time
    g.op("Mul", [x, joined], "/model/Mul", outputs=["y"])  # per forward: reads the input
    g.output("y", FLOAT, [1, 2 * N])
    model = g.to_model()
    assert [n.name for n in load_time_nodes(model)] == ["/load/a/Cast", "/load/b/Cast", "/load/ab/Concat"]
    assert [n.name for n in forward_nodes(model)] == ["/model/Mul"]
    y = _run(g, np.full((1, 2 * N), 3, np.float32))
    assert np.array_equal(y[0], np.r_[np.full(N, 3), np.zeros(N)])
