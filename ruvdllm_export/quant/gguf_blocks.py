"""GGUF 4-bit blocks -> the MatMulNBits layout (Q4Tensor), exactly.

    Q4_0  per 32: d (f16), 16 bytes of nibbles       w = d * (q - 8)        -> scales d, zero point 8
    Q4_1  per 32: d, m (f16), 16 bytes of nibbles    w = d * q + m          -> scales d, zero point 0, mins m
    Q4_K  per 256: d, dmin (f16), 12 bytes of 6-bit (sc, m) per 32-sub-block, 128 bytes of nibbles
                                                     w = d*sc * q - dmin*m  -> scales d*sc, zero point 0, mins -dmin*m

Inside a GGUF block the nibbles are ordered differently from MatMulNBits: Q4_0/Q4_1 keep
elements 0..15 in the low nibbles and 16..31 in the high nibbles of the 16 bytes; Q4_K keeps
sub-block 2j in the low and 2j+1 in the high nibbles of bytes 32j..32j+31. We unpack to codes
and repack. d*sc (an f16 times a 6-bit integer) is exact in float32, so the float32 products the
graph computes equal gguf's own dequantization.

Inputs are the raw uint8 rows as gguf.GGUFReader gives them: [N, bytes_per_row].
"""

from __future__ import annotations

import numpy as np
from gguf.quants import Q4_K

from ruvdllm_export.quant.q4 import BLOCK, Q4Tensor, pack_nibbles

Q4_0_BYTES = 18  # d f16 + 16 nibble bytes
Q4_1_BYTES = 20  # d, m f16 + 16 nibble bytes
Q4_K_BYTES = 144  # d, dmin f16 + 12 scale bytes + 128 nibble bytes, per 256
QK_K = 256


def _f16(raw: np.ndarray) -> np.ndarray:
    """[..., 2] uint8 -> float32 [...] through little-endian float16."""
    return np.ascontiguousarray(raw).view("<f2")[..., 0].astype(np.float32)


def _split_blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    n, row_bytes = raw.shape
    if row_bytes % block_bytes:
        raise ValueError(f"row of {row_bytes} bytes is not a whole number of {block_bytes}-byte blocks")
    return raw.reshape(n, row_bytes // block_bytes, block_bytes)


def _q4_0_1_codes(qs: np.ndarray) -> np.ndarray:
    """[N, nb, 16] GGUF nibble bytes -> uint8 codes [N, nb * 32] in element order."""
    n, nb, _ = qs.shape
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, nb * BLOCK)


def q4_0_to_q4(raw: np.ndarray) -> Q4Tensor:
    blocks = _split_blocks(raw, Q4_0_BYTES)
    n, nb, _ = blocks.shape
    return Q4Tensor(
        packed=pack_nibbles(_q4_0_1_codes(blocks[..., 2:])),
        scales=_f16(blocks[..., 0:2]),
        zero_points=np.full((n, nb), 8, np.uint8),
        mins=None,
        in_features=nb * BLOCK,
    )


def q4_1_to_q4(raw: np.ndarray) -> Q4Tensor:
    blocks = _split_blocks(raw, Q4_1_BYTES)
    n, nb, _ = blocks.shape
    return Q4Tensor(
        packed=pack_nibbles(_q4_0_1_codes(blocks[..., 4:])),
        scales=_f16(blocks[..., 0:2]),
        zero_points=np.zeros((n, nb), np.uint8),
        mins=_f16(blocks[..., 2:4]),
        in_features=nb * BLOCK,
    )


def q4_k_to_q4(raw: np.ndarray) -> Q4Tensor:
    blocks = _split_blocks(raw, Q4_K_BYTES)
    n, n_super, _ = blocks.shape
    flat = blocks.reshape(n * n_super, Q4_K_BYTES)
    d = _f16(flat[:, 0:2])
    dmin = _f16(flat[:, 2:4])
    sc, m = Q4_K.get_scale_min(np.ascontiguousarray(flat[:, 4:16]))  # the 6-bit unpacking, as gguf does it
    qs = flat[:, 16:].reshape(-1, 4, 1, 32)  # 4 chunks of 32 bytes; low nibbles first sub-block
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(n, n_super * QK_K)
    sub = QK_K // BLOCK  # 8 sub-blocks per super-block
    return Q4Tensor(
        packed=pack_nibbles(codes),
        scales=(d[:, None] * sc.astype(np.float32)).reshape(n, n_super * sub),
        zero_points=np.zeros((n, n_super * sub), np.uint8),
        mins=(-(dmin[:, None] * m.astype(np.float32))).reshape(n, n_super * sub),
        in_features=n_super * QK_K,
    )
