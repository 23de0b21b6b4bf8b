"""Rotary position embedding (LLaMA / Qwen "rotate half" layout) from absolute position_ids.

`com.microsoft.RotaryEmbedding` reads cos/sin rows by position id; it has CPU, CUDA and WebGPU
kernels (onnxruntime-genai relies on it on all three). The tables come from
ruvdllm_export/rope_scaling.py, which the torch reference uses too.
"""

from __future__ import annotations

import warnings

from ruvdllm_export.onnx_graph.graph import MS_DOMAIN, GraphBuilder
from ruvdllm_export.rope_scaling import rope_tables, static_table_notice
from ruvdllm_export.spec import ModelSpec


def make_rope_caches(g: GraphBuilder, spec: ModelSpec, max_position: int) -> tuple[str, str]:
    """cos/sin tables [max_position, head_dim / 2] with the spec's rope scaling and attention factor
    folded in (RotaryEmbedding and GroupQueryAttention compute x·cos + rotate_half(x)·sin, so a
    factor on both tables is transformers' `cos * attention_scaling`)."""
    notice = static_table_notice(spec.rope_scaling, max_position)
    if notice:
        warnings.warn(notice, stacklevel=3)
    cos, sin = rope_tables(spec.head_dim, spec.rope_theta, spec.rope_scaling, max_position)
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
