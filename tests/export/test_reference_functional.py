"""The torch model's 4-bit dequantization is the numpy reference's, bit for bit."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvdllm_export.quant.q4 import Q4Tensor, dequantize_q4, quantize_q4
from ruvdllm_export.reference.functional import dequantize_q4 as torch_dequantize_q4
from ruvdllm_export.reference.functional import unpack_q4
from ruvdllm_export.reference.linear import FrozenLinear


def _torch(t: Q4Tensor) -> torch.Tensor:
    mins = None if t.mins is None else torch.from_numpy(t.mins)
    return torch_dequantize_q4(
        torch.from_numpy(t.packed),
        torch.from_numpy(t.scales),
        torch.from_numpy(t.zero_points),
        mins,
        t.in_features,
    )


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 100), with_mins=st.booleans(), seed=st.integers(0, 2**16))
def test_torch_dequantize_equals_numpy_bit_for_bit(rows, cols, with_mins, seed):
    rng = np.random.default_rng(seed)
    t = quantize_q4(rng.standard_normal((rows, cols)).astype(np.float32) * rng.uniform(0.01, 10))
    if with_mins:
        t = Q4Tensor(
            t.packed, t.scales, t.zero_points, rng.standard_normal(t.scales.shape).astype(np.float32), cols
        )
    expected = dequantize_q4(t)
    got = _torch(t).numpy()
    assert got.shape == (rows, cols)
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_unpack_order_is_matmulnbits(seed):
    """Byte j of a block holds k = 2j (low nibble) and k = 2j + 1 (high nibble)."""
    packed = np.random.default_rng(seed).integers(0, 256, (2, 3, 16), dtype=np.uint8)
    codes = unpack_q4(torch.from_numpy(packed)).numpy()
    np.testing.assert_array_equal(codes[..., 0::2], packed & 0x0F)
    np.testing.assert_array_equal(codes[..., 1::2], packed >> 4)


def test_q4_linear_keeps_the_packed_layout():
    w = np.random.default_rng(0).standard_normal((8, 40)).astype(np.float32)
    t = quantize_q4(w)
    linear = FrozenLinear(t)
    assert linear.packed.dtype == torch.uint8 and tuple(linear.packed.shape) == (8, 2, 16)
    assert linear.in_features == 40 and linear.quantized
    x = torch.randn(3, 40)
    torch.testing.assert_close(linear(x), x @ torch.from_numpy(dequantize_q4(t)).T)


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 100), seed=st.integers(0, 2**16))
def test_torch_q8_dequantize_equals_numpy_bit_for_bit(rows, cols, seed):
    from ruvdllm_export.onnx_graph.q8 import dequantize_q8, quantize_q8

    t = quantize_q8(np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32))
    linear = FrozenLinear(t)
    assert linear.bits == 8 and linear.quantized
    np.testing.assert_array_equal(linear.base_weight().numpy(), dequantize_q8(t))
