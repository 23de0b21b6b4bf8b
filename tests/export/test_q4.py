"""The reference Q4 quantizer and the MatMulNBits layout, checked against onnxruntime itself."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from ruvdllm_export.quant.q4 import (
    BLOCK,
    Q4Tensor,
    concat_rows,
    dequantize_q4,
    pack_nibbles,
    pack_zero_points,
    quantize_q4,
    unpack_nibbles,
)

weights = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=80),
    elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False),
)


@settings(max_examples=200, deadline=None)
@given(weights)
def test_round_trip_error_is_at_most_half_a_step_per_block(w):
    t = quantize_q4(w)
    n, k = w.shape
    assert t.shape == (n, k) and t.packed.shape == (n, -(-k // BLOCK), 16)
    err = np.abs(dequantize_q4(t).astype(np.float64) - w)
    step = np.repeat(t.scales.astype(np.float64), BLOCK, axis=1)[:, :k]
    # float32 storage of the scale adds relative ~1e-7 per step; underflowed scales (|w| ~ 1e-38) decode 0
    assert np.all(err <= 0.5 * step * (1 + 1e-5) + 1e-30)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=3), st.integers(1, 70), st.data())
def test_stacked_rows_decode_to_the_stacked_matrices(rows, k, data):
    """Packing q/k/v (gate/up) into one matmul is exact, also when only some carry block mins."""
    tensors = []
    for n in rows:
        w = np.random.default_rng(n * 100 + k).standard_normal((n, k)).astype(np.float32)
        t = quantize_q4(w)
        if data.draw(st.booleans(), label="mins"):
            mins = np.random.default_rng(n).standard_normal(t.scales.shape).astype(np.float32)
            t = Q4Tensor(t.packed, t.scales, t.zero_points, mins, t.in_features)
        tensors.append(t)
    stacked = concat_rows(tensors)
    expected = np.concatenate([dequantize_q4(t) for t in tensors])
    np.testing.assert_array_equal(dequantize_q4(stacked), expected)


def test_stacking_refuses_different_input_widths():
    with pytest.raises(ValueError, match="input widths"):
        concat_rows([quantize_q4(np.ones((2, 32), np.float32)), quantize_q4(np.ones((2, 64), np.float32))])


def test_zero_blocks_and_zero_weights_decode_exactly():
    w = np.zeros((3, 64), np.float32)
    w[1, 40] = -2.5
    w[2, 5:9] = [1.0, 0.0, 0.0, 3.0]
    t = quantize_q4(w)
    out = dequantize_q4(t)
    assert t.scales[0].tolist() == [0.0, 0.0]
    assert np.all(out[w == 0] == 0)
    assert np.all(np.isfinite(out))


@given(
    hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 5), st.integers(1, 4).map(lambda b: b * BLOCK)),
        elements=st.integers(0, 15),
    )
)
def test_pack_unpack_are_inverse(q):
    packed = pack_nibbles(q)
    assert packed.dtype == np.uint8 and packed.shape == (q.shape[0], q.shape[1] // BLOCK, 16)
    assert np.array_equal(unpack_nibbles(packed), q)


def test_pack_puts_even_k_in_the_low_nibble():
    q = np.zeros((1, BLOCK), np.uint8)
    q[0, 0], q[0, 1], q[0, 2] = 3, 12, 7
    packed = pack_nibbles(q)
    assert packed[0, 0, 0] == 3 | (12 << 4) and packed[0, 0, 1] == 7


@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 5), st.integers(1, 7)), elements=st.integers(0, 15)))
def test_zero_points_pack_two_per_byte_per_row(zp):
    packed = pack_zero_points(zp)
    n, nb = zp.shape
    assert packed.shape == (n, -(-nb // 2))
    assert np.array_equal((packed & 0x0F), zp[:, 0::2])
    assert np.array_equal((packed >> 4)[:, : nb // 2], zp[:, 1::2])


def _matmulnbits(x: np.ndarray, t: Q4Tensor, with_zero_points: bool) -> np.ndarray:
    """One real com.microsoft.MatMulNBits node in onnxruntime: x [M, K] @ W^T."""
    n, k = t.shape
    inits = [
        helper.make_tensor("B", TensorProto.UINT8, t.packed.shape, t.packed.tobytes(), raw=True),
        helper.make_tensor("scales", TensorProto.FLOAT, [t.scales.size], t.scales.ravel().tolist()),
    ]
    inputs = ["A", "B", "scales"]
    if with_zero_points:
        zp = pack_zero_points(t.zero_points)
        inits.append(helper.make_tensor("zp", TensorProto.UINT8, [zp.size], zp.tobytes(), raw=True))
        inputs.append("zp")
    node = helper.make_node(
        "MatMulNBits",
        inputs,
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=BLOCK,
        name="/test/MatMulNBits",
    )
    graph = helper.make_graph(
        [node],
        "q4",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"A": x})[0]


@pytest.mark.parametrize("n,k", [(8, 64), (5, 96), (7, 70)])  # even / odd block count, padded K
def test_onnxruntime_matmulnbits_reads_the_layout(n, k):
    rng = np.random.default_rng(n * k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((3, k)).astype(np.float32)
    t = quantize_q4(w)
    assert len(set(t.zero_points.ravel().tolist())) > 1  # distinct zero points actually exercised
    expected = x @ dequantize_q4(t).T
    np.testing.assert_allclose(_matmulnbits(x, t, True), expected, rtol=1e-4, atol=1e-4)


def test_mins_are_exact_as_zero_point_0_plus_block_sum_correction():
    """The Q4_1 / Q4_K path of DESIGN.md: MatMulNBits(zp 0) + ReduceSum(x in blocks) @ mins^T."""
    rng = np.random.default_rng(1)
    n, k = 6, 96
    codes = rng.integers(0, 16, (n, k), dtype=np.uint8)
    t = Q4Tensor(
        packed=pack_nibbles(codes),
        scales=rng.uniform(0.01, 0.1, (n, k // BLOCK)).astype(np.float32),
        zero_points=np.zeros((n, k // BLOCK), np.uint8),
        mins=rng.uniform(-0.5, 0.0, (n, k // BLOCK)).astype(np.float32),
        in_features=k,
    )
    x = rng.standard_normal((4, k)).astype(np.float32)
    block_sums = x.reshape(4, k // BLOCK, BLOCK).sum(-1)
    got = _matmulnbits(x, t, True) + block_sums @ t.mins.T
    np.testing.assert_allclose(got, x @ dequantize_q4(t).T, rtol=1e-4, atol=1e-4)


@settings(max_examples=100, deadline=None)
@given(w=weights, chunk=st.integers(1, 300))
def test_quantizing_in_chunks_of_rows_gives_the_same_blocks(w, chunk):
    """Rows quantize independently: the chunks that bound quantize_q4's float64 temporaries
    (QUANTIZE_ELEMENTS weights at a time) give the whole matrix's bytes."""
    from ruvdllm_export.quant import q4

    whole = q4._quantize_q4_rows(w)
    saved = q4.QUANTIZE_ELEMENTS
    q4.QUANTIZE_ELEMENTS = chunk  # hypothesis runs many examples per test: no fixture here
    try:
        chunked = quantize_q4(w)
    finally:
        q4.QUANTIZE_ELEMENTS = saved
    for field in ("packed", "scales", "zero_points"):
        got, expected = getattr(chunked, field), getattr(whole, field)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), field
