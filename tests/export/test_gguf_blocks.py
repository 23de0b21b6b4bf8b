"""GGUF 4-bit blocks map to the MatMulNBits layout with no loss: equal to gguf's own dequantizer."""

import gguf
import numpy as np
from gguf.quants import dequantize
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvdllm_export.quant.gguf_blocks import q4_0_to_q4, q4_1_to_q4, q4_k_to_q4
from ruvdllm_export.quant.q4 import dequantize_q4, take_rows

Q = gguf.GGMLQuantizationType
# qtype -> (mapping, byte offsets of the f16 fields at the start of each block)
MAPPINGS = {Q.Q4_0: (q4_0_to_q4, (0,)), Q.Q4_1: (q4_1_to_q4, (0, 2)), Q.Q4_K: (q4_k_to_q4, (0, 2))}

finite_f16 = st.floats(-60000, 60000, width=16, allow_nan=False, allow_infinity=False)


@st.composite
def raw_rows(draw, qtype):
    """Any payload bytes with finite f16 d / m (dmin): every such block is valid."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows, blocks = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    raw = np.random.default_rng(seed).integers(0, 256, (rows, blocks, type_size), dtype=np.uint8)
    for offset in MAPPINGS[qtype][1]:
        halves = np.array(
            draw(st.lists(finite_f16, min_size=rows * blocks, max_size=rows * blocks)), np.float16
        )
        raw[:, :, offset : offset + 2] = halves.reshape(rows, blocks, 1).view(np.uint8)
    return raw.reshape(rows, blocks * type_size)


def _check(qtype, raw):
    mapping, _ = MAPPINGS[qtype]
    t = mapping(raw)
    expected = dequantize(raw, qtype)
    assert t.shape == expected.shape
    np.testing.assert_array_equal(dequantize_q4(t), expected)  # bit-exact, not just close


@settings(max_examples=60, deadline=None)
@given(raw_rows(Q.Q4_0))
def test_q4_0_maps_exactly(raw):
    _check(Q.Q4_0, raw)


@settings(max_examples=60, deadline=None)
@given(raw_rows(Q.Q4_1))
def test_q4_1_maps_exactly(raw):
    _check(Q.Q4_1, raw)


@settings(max_examples=40, deadline=None)
@given(raw_rows(Q.Q4_K))
def test_q4_k_maps_exactly(raw):
    _check(Q.Q4_K, raw)


def test_q4_0_uses_zero_point_8_and_q4_1_uses_mins():
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    t0 = q4_0_to_q4(gguf.quants.quantize(x, Q.Q4_0))
    t1 = q4_1_to_q4(gguf.quants.quantize(x, Q.Q4_1))
    assert np.all(t0.zero_points == 8) and t0.mins is None
    assert np.all(t1.zero_points == 0) and t1.mins is not None


def test_row_permutation_is_exact_on_blocks():
    raw = gguf.quants.quantize(np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32), Q.Q4_1)
    order = np.array([3, 1, 7, 0, 2, 6, 5, 4])
    np.testing.assert_array_equal(
        dequantize_q4(take_rows(q4_1_to_q4(raw), order)), dequantize(raw, Q.Q4_1)[order]
    )
