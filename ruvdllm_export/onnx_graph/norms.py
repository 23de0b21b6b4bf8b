"""RMSNorm, alone and fused with the residual add.

The residual add + norm is `com.microsoft.SkipSimplifiedLayerNormalization`, as onnxruntime-genai
emits for LLaMA/Qwen: it has kernels on the CPU, CUDA and WebGPU execution providers and saves a
pass over the hidden state per norm. A norm without a residual (the first one, Qwen3's q/k norms)
is written with standard ops in the pattern onnxruntime fuses into SimplifiedLayerNormalization at
load: that op lives in the ONNX domain without an ONNX schema, so writing it directly would fail
onnx.checker.
"""

from __future__ import annotations

import numpy as np

from ruvdllm_export.onnx_graph.graph import MS_DOMAIN, GraphBuilder


def make_rms_norm(g: GraphBuilder, scope: str, x: str, weight: np.ndarray, eps: float) -> str:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis.

    x ─Pow(2)─ReduceMean(-1)─Add(eps)─Sqrt─┐
    x ─────────────────────────────────────Div─Mul(weight)─► y
    """
    gamma = g.initializer(f"{scope}.weight", weight.astype(np.float32))
    square = g.op("Pow", [x, g.const(2.0, np.float32)], f"{scope}/Pow")
    mean = g.op("ReduceMean", [square, g.const([-1])], f"{scope}/ReduceMean", keepdims=1)
    shifted = g.op("Add", [mean, g.const(eps, np.float32)], f"{scope}/Add_eps")
    rms = g.op("Sqrt", [shifted], f"{scope}/Sqrt")
    normed = g.op("Div", [x, rms], f"{scope}/Div")
    return g.op("Mul", [normed, gamma], f"{scope}/Mul_weight")


def make_skip_rms_norm(
    g: GraphBuilder, scope: str, x: str, residual: str, weight: np.ndarray, eps: float
) -> tuple[str, str]:
    """Residual add fused with the next norm.

        x ──┐
            Add ──► residual' (output 3) ──► RMSNorm(weight) ──► normed (output 0)
        residual ──┘

    Returns (normed, residual')."""
    gamma = g.initializer(f"{scope}.weight", weight.astype(np.float32))
    normed, _, _, summed = g.op(
        "SkipSimplifiedLayerNormalization",
        [x, residual, gamma],
        f"{scope}/SkipSimplifiedLayerNorm",
        domain=MS_DOMAIN,
        outputs=4,
        epsilon=eps,
    )
    return normed, summed


def make_head_rms_norm(
    g: GraphBuilder, scope: str, x: str, weight: np.ndarray, eps: float, heads: int, head_dim: int
) -> str:
    """Qwen3's per-head RMSNorm on q or k: [1, S, heads*head_dim] → per head → back.

    x [1,S,H*D] ─Reshape─► [1,S,H,D] ─RMSNorm(axis -1)─► ─Reshape─► [1,S,H*D]
    """
    split = g.op("Reshape", [x, g.const([0, 0, heads, head_dim])], f"{scope}/Reshape_heads")
    normed = make_rms_norm(g, scope, split, weight, eps)
    return g.op("Reshape", [normed, g.const([0, 0, heads * head_dim])], f"{scope}/Reshape_back")
