"""8-bit block quantization in MatMulNBits' bits=8 layout, for the token table (embedding + tied head).

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

BLOCK = 32
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
