"""4-bit block quantization in exactly the layout of onnxruntime's com.microsoft.MatMulNBits.

    weight W: [N, K] (out_features, in_features), quantized along K in blocks of 32.
    packed:      uint8   [N, n_blocks, 16]  element k of row n lives in block k // 32, byte (k % 32) // 2,
                                            even k in the low nibble, odd k in the high nibble
    scales:      float32 [N, n_blocks]
    zero_points: uint8   [N, n_blocks]      values 0..15, unpacked (the graph builder packs two per byte)
    mins:        float32 [N, n_blocks] | None   extra per-block offset (GGUF Q4_1 / Q4_K "m")

    W[n, k] = scales[n, b] * (q[n, k] - zero_points[n, b]) + (mins[n, b] if mins is not None else 0)

With `mins` the graph uses zero_points 0 and adds ReduceSum(x reshaped to blocks) @ mins^T, which is
exact and keeps the fast integer kernels (see DESIGN.md). K that is not a multiple of 32 is padded
with zeros in the last block (in_features keeps the true K).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 32


@dataclass(frozen=True)
class Q4Tensor:
    packed: np.ndarray  # uint8 [N, n_blocks, 16]
    scales: np.ndarray  # float32 [N, n_blocks]
    zero_points: np.ndarray  # uint8 [N, n_blocks], 0..15
    mins: np.ndarray | None  # float32 [N, n_blocks] or None
    in_features: int  # true K (<= n_blocks * 32)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.packed.shape[0], self.in_features)

    @property
    def n_blocks(self) -> int:
        return self.packed.shape[1]
