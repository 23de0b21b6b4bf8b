"""Rotary position embedding (LLaMA / Qwen "rotate half" layout) from absolute position_ids.

`com.microsoft.RotaryEmbedding` reads cos/sin rows by position id; it has CPU, CUDA and WebGPU
kernels (onnxruntime-genai relies on it on all three).
"""

from __future__ import annotations

import numpy as np

from ruvdllm_export.onnx_graph.graph import MS_DOMAIN, GraphBuilder


def rope_cache(head_dim: int, theta: float, max_position: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin tables [max_position, head_dim / 2], float32.

    Computed in float32 the way transformers does (inv_freq in float32, positions × inv_freq in
    float32, then cos/sin), so the graph matches the reference rounding rather than a more exact
    float64 table that would drift from it at long positions."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
    positions = np.arange(max_position, dtype=np.float32)
    freqs = np.outer(positions, inv_freq).astype(np.float32)  # [max_position, head_dim/2]
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def make_rope_caches(g: GraphBuilder, head_dim: int, theta: float, max_position: int) -> tuple[str, str]:
    cos, sin = rope_cache(head_dim, theta, max_position)
    return g.initializer("/model/rope/cos_cache", cos), g.initializer("/model/rope/sin_cache", sin)


def make_rope(
    g: GraphBuilder, scope: str, x: str, position_ids: str, caches: tuple[str, str], num_heads: int
) -> str:
    """x [1, S, num_heads*head_dim] rotated by its positions; same shape out."""
    cos, sin = caches
    return g.op(
        "RotaryEmbedding",
        [x, position_ids, cos, sin],
        f"{scope}/RotaryEmbedding",
        domain=MS_DOMAIN,
        interleaved=0,
        num_heads=num_heads,
    )
