"""8-bit block quantization for the token table (embedding + tied head), in MatMulNBits' bits=8
layout or split into two 4-bit halves.

The head and the embedding are the tensors most sensitive to quantization (llama.cpp keeps them at
Q6_K/Q8_0 in its 4-bit files), and SmolLM2's Q4_1 GGUF stores its tied table as Q8_0. Symmetric
absmax quantization with zero point 128 maps Q8_0 exactly: Q8_0 picks d = amax / 127, so the
block's largest |q| is 127 and re-deriving d from the dequantized block gives d back, and with it
every q. A float table loses at most half a step per element.

    packed:      uint8 [N, n_blocks, 32]   q + 128
    scales:      float32 [N, n_blocks]
    zero_points: uint8 [N, n_blocks]       all 128 (MatMulNBits' default for 8 bits)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ruvdllm_export.quant.q4 import BLOCK, ROWS_PER_CHUNK, Q4Tensor, dequantize_q4, pack_nibbles, take_rows

ZERO_POINT = 128


@dataclass(frozen=True)
class Q8Tensor:
    packed: np.ndarray  # uint8 [N, n_blocks, 32]
    scales: np.ndarray  # float32 [N, n_blocks]
    in_features: int  # true K (<= n_blocks * 32)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.packed.shape[0], self.in_features)

    @property
    def n_blocks(self) -> int:
        return self.packed.shape[1]


def quantize_q8(w: np.ndarray) -> Q8Tensor:
    """Symmetric 8-bit quantization of W [N, K] in blocks of 32 along K; error ≤ half a step."""
    if len(w) > ROWS_PER_CHUNK:  # rows quantize independently: chunks bound the temporaries
        parts = [quantize_q8(w[i : i + ROWS_PER_CHUNK]) for i in range(0, len(w), ROWS_PER_CHUNK)]
        return Q8Tensor(
            packed=np.concatenate([p.packed for p in parts]),
            scales=np.concatenate([p.scales for p in parts]),
            in_features=parts[0].in_features,
        )
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    nb = -(-k // BLOCK)
    padded = np.zeros((n, nb * BLOCK), np.float32)
    padded[:, :k] = w
    blocks = padded.reshape(n, nb, BLOCK)
    scales = (np.abs(blocks).max(axis=-1) / np.float32(127)).astype(np.float32)
    inv = np.divide(np.float32(1), scales, out=np.zeros_like(scales), where=scales > 0)
    q = np.clip(np.rint(blocks * inv[..., None]), -127, 127)
    return Q8Tensor(packed=(q + ZERO_POINT).astype(np.uint8), scales=scales, in_features=k)


def dequantize_q8(t: Q8Tensor) -> np.ndarray:
    w = t.scales[..., None] * (t.packed.astype(np.float32) - np.float32(ZERO_POINT))
    return w.reshape(t.packed.shape[0], -1)[:, : t.in_features].astype(np.float32)


@dataclass(frozen=True)
class SplitQ8Tensor:
    """An 8-bit table stored as two 4-bit halves side by side along K, for MatMulNBits' float path.

    MatMulNBits with bits=8 has no fast float kernel on CPU (accuracy_level 0 dequantized the whole
    table on every call: ~170 ms for SmolLM2's head at M=1), while its 4-bit float kernel is fast.
    With u = q + 128 = 16·hi + lo (hi, lo in 0..15):

        d·q = 16d·(hi − 8) + d·(lo − 0)

    so blocks [hi | lo] with scales [16d | d] and zero points [8 | 0] reproduce the 8-bit table
    exactly when fed the input twice, [x | x]. Twice the 4-bit work, no loss.
    """

    q4: Q4Tensor  # [N, 2*n_blocks] blocks: high halves first, then low halves
    in_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.q4.packed.shape[0], self.in_features)

    @property
    def n_blocks(self) -> int:
        return self.q4.n_blocks // 2


def split_q8(t: Q8Tensor) -> SplitQ8Tensor:
    n, nb, _ = t.packed.shape
    hi, lo = t.packed // 16, t.packed % 16  # [N, nb, 32] each, 0..15
    codes = np.concatenate([hi, lo], axis=1).reshape(n, 2 * nb * BLOCK)
    scales = np.concatenate([t.scales * np.float32(16), t.scales], axis=1).astype(np.float32)
    zero_points = np.concatenate([np.full((n, nb), 8, np.uint8), np.zeros((n, nb), np.uint8)], axis=1)
    q4 = Q4Tensor(
        packed=pack_nibbles(codes),
        scales=scales,
        zero_points=zero_points,
        mins=None,
        in_features=2 * nb * BLOCK,
    )
    return SplitQ8Tensor(q4=q4, in_features=t.in_features)


def dequantize_split_q8(t: SplitQ8Tensor) -> np.ndarray:
    """The table's float32 values, ROWS_PER_CHUNK rows at a time: the 4-bit halves of a whole
    128k-row table would be a 2 GB temporary beside the 1 GB result."""
    n = t.q4.packed.shape[0]
    out = np.empty((n, t.in_features), np.float32)
    for start in range(0, n, ROWS_PER_CHUNK):
        stop = min(start + ROWS_PER_CHUNK, n)
        w = dequantize_q4(take_rows(t.q4, np.arange(start, stop)))  # [rows, 2 * nb * 32]
        half = w.shape[1] // 2
        out[start:stop] = (w[:, :half] + w[:, half:])[:, : t.in_features]
    return out
