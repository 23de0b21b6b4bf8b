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
# Rows quantized per step: the quantizer's float64 temporaries are ~6x the rows' float32 size, so a
# large matrix (a 128k-row token table) is done in slices of this many rows (same result).
ROWS_PER_CHUNK = 4096
# quantize_q4 works in float64 with ~5 temporaries of the chunk's size (40 bytes per weight): by
# rows alone a 2048 x 8192 down_proj was one 16M-weight chunk, 0.58 GB. 2M weights: ~80 MB.
QUANTIZE_ELEMENTS = 1 << 21


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


def n_blocks_for(k: int) -> int:
    return -(-k // BLOCK)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """uint8 codes [N, n_blocks * 32] (0..15) -> MatMulNBits B [N, n_blocks, 16]: even k low nibble."""
    n, k = q.shape
    if k % BLOCK:
        raise ValueError(f"pack_nibbles: K={k} is not a multiple of {BLOCK}")
    q = q.astype(np.uint8).reshape(n, k // BLOCK, BLOCK // 2, 2)
    return (q[..., 0] & 0x0F) | ((q[..., 1] & 0x0F) << 4)


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """MatMulNBits B [N, n_blocks, 16] -> uint8 codes [N, n_blocks * 32]; inverse of pack_nibbles."""
    n, nb, _ = packed.shape
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1)  # [N, nb, 16, 2]: (low, high) = (even k, odd k)
    return codes.reshape(n, nb * BLOCK).astype(np.uint8)


def pack_zero_points(zero_points: np.ndarray) -> np.ndarray:
    """uint8 zero points [N, n_blocks] -> MatMulNBits' 4-bit zero_points input [N, ceil(n_blocks / 2)].

    Each row is packed on its own (rows start on a byte boundary), block 2j in the low nibble of byte
    j and block 2j+1 in the high nibble; an odd last block leaves the high nibble 0 (unused).
    """
    n, nb = zero_points.shape
    zp = zero_points.astype(np.uint8) & 0x0F
    if nb % 2:
        zp = np.concatenate([zp, np.zeros((n, 1), np.uint8)], axis=1)
    zp = zp.reshape(n, -1, 2)
    return zp[..., 0] | (zp[..., 1] << 4)


def quantize_q4(w: np.ndarray) -> Q4Tensor:
    """Asymmetric 4-bit quantization of W [N, K] in blocks of 32 along K (the reference quantizer).

    Per block: lo = min(w, 0), hi = max(w, 0), scale = (hi - lo) / 15, integer zero point
    zp = round(-lo / scale), q = clip(round(w / scale) + zp, 0, 15). Including 0 in [lo, hi] makes
    0 exactly representable (padding and pruned weights stay 0). The error is at most half a step
    (scale / 2) per element: the only clipped values lie within the zero point's own rounding
    error (<= 0.5 step) of the range ends. An all-zero block gets scale 0 and decodes to zeros.
    """
    if np.ndim(w) != 2:
        raise ValueError(f"quantize_q4: expected a 2-D weight, got shape {np.shape(w)}")
    rows = max(1, QUANTIZE_ELEMENTS // max(1, np.shape(w)[1]))
    if len(w) > rows:  # rows quantize independently: chunks bound the float64 temporaries
        parts = [_quantize_q4_rows(w[i : i + rows]) for i in range(0, len(w), rows)]
        return Q4Tensor(
            packed=np.concatenate([p.packed for p in parts]),
            scales=np.concatenate([p.scales for p in parts]),
            zero_points=np.concatenate([p.zero_points for p in parts]),
            mins=None,
            in_features=parts[0].in_features,
        )
    return _quantize_q4_rows(w)


def _quantize_q4_rows(w: np.ndarray) -> Q4Tensor:
    w = np.asarray(w, dtype=np.float64)
    n, k = w.shape
    nb = n_blocks_for(k)
    padded = np.zeros((n, nb * BLOCK), np.float64)
    padded[:, :k] = w
    blocks = padded.reshape(n, nb, BLOCK)
    lo = np.minimum(blocks.min(axis=-1), 0.0)
    hi = np.maximum(blocks.max(axis=-1), 0.0)
    scale = ((hi - lo) / 15.0).astype(np.float32)  # stored precision: quantize against it
    scale64 = scale.astype(np.float64)
    inv = np.divide(1.0, scale64, out=np.zeros_like(scale64), where=scale64 > 0)
    zp = np.clip(np.round(-lo * inv), 0, 15)
    q = np.clip(np.round(blocks * inv[..., None]) + zp[..., None], 0, 15).astype(np.uint8)
    return Q4Tensor(
        packed=pack_nibbles(q.reshape(n, nb * BLOCK)),
        scales=scale,
        zero_points=zp.astype(np.uint8),
        mins=None,
        in_features=k,
    )


def dequantize_q4(t: Q4Tensor) -> np.ndarray:
    """Q4Tensor -> float32 W [N, K]: scales * (q - zero_points) (+ mins), computed in float32 as the
    graph does."""
    n, nb = t.scales.shape
    q = unpack_nibbles(t.packed).reshape(n, nb, BLOCK).astype(np.float32)
    w = t.scales[..., None] * (q - t.zero_points[..., None].astype(np.float32))
    if t.mins is not None:
        w = w + t.mins[..., None]
    return w.reshape(n, nb * BLOCK)[:, : t.in_features].astype(np.float32)


def take_rows(t: Q4Tensor, rows: np.ndarray) -> Q4Tensor:
    """Reorder (or select) output rows; exact, since every row carries its own blocks."""
    return Q4Tensor(
        packed=t.packed[rows],
        scales=t.scales[rows],
        zero_points=t.zero_points[rows],
        mins=None if t.mins is None else t.mins[rows],
        in_features=t.in_features,
    )


def concat_rows(tensors: list[Q4Tensor]) -> Q4Tensor:
    """Stack matrices that read the same input along N (q/k/v into one, gate/up into one); exact.
    A matrix without block mins gets zero mins when another one has them."""
    k = {t.in_features for t in tensors}
    if len(k) != 1:
        raise ValueError(f"concat_rows: matrices read different input widths {sorted(k)}")
    with_mins = any(t.mins is not None for t in tensors)
    return Q4Tensor(
        packed=np.concatenate([t.packed for t in tensors]),
        scales=np.concatenate([t.scales for t in tensors]),
        zero_points=np.concatenate([t.zero_points for t in tensors]),
        mins=np.concatenate([np.zeros_like(t.scales) if t.mins is None else t.mins for t in tensors])
        if with_mins
        else None,
        in_features=k.pop(),
    )
