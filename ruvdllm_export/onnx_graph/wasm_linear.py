"""Linears for onnxruntime-web's WebAssembly build, whose weights are made when the session loads
from the 4-bit blocks on disk (the wasm target).

Why: in onnxruntime-web 1.30's wasm build MatMulNBits is ~17x slower than the native kernel (it
dequantizes the weights on every call), while a float32 MatMul is 6-10x faster than it and the int8
GEMM (MatMulInteger) faster still (benchmarks/browser_ops.py, benchmarks/README.md "Browser").

The file keeps the same 4-bit blocks as the other targets (the same bytes on disk, within the 120 MB
budget); nodes over initializers only turn them into the dense weights at load, and onnxruntime
folds them into constants (as the `/load/` Concat and Cast nodes elsewhere):

    load:  4-bit / 8-bit blocks ─dequantize (the embedding's own gather over every row)─► W [N, K]

    "widened" (the wasm default): exact, 4 bytes per weight in memory
      load:     W ─Transpose─► Wᵀ [K, N] float32
      forward:  x ─MatMul(Wᵀ)─► y

    "int8": 1 byte per weight, activations quantized to 8 bits per tensor at every forward
      load:     W ─ReduceMax|·| per row─► amax [N, 1];  s = amax / 127
                W ─Mul(127 / amax)─Round─Clip[-127, 127]─Cast(int8)─Transpose─► W8 [K, N]
      forward:  x ─DynamicQuantizeLinear─► x8 (uint8), x_scale, x_zero
                MatMulInteger(x8, W8, x_zero) ─Cast(float)─Mul(x_scale · s)─► y

int8 is the faster kernel, but one activation scale per tensor is too coarse for SmolLM2's outlier
channels: top-1 agreement with the reference fell to 64.7% on the validation paragraph (accuracy
level 4's per-block int8 keeps 96.8%), and the export's validation refuses it. Hence "widened" for
the target; "int8" stays selectable (`--quantization int8`) for models without such outliers.

Memory at load is the open problem: onnxruntime keeps every intermediate of its constant folding
until the pass ends, so this chain holds ~12 float copies of the weights at once (5.8 GB for
SmolLM2 on CPython; onnxruntime-web fails with bad_alloc). Widening outside the graph, before the
session is created, is the way out (docs/web.md, "The wasm target").
"""

from __future__ import annotations

import numpy as np

from ruvdllm_export.onnx_graph.graph import GraphBuilder

INT8_MAX = 127
# Rows whose largest |w| is below this are scaled as if it were this (127 / it stays finite in
# float32; a zero row gets codes 0)
AMAX_FLOOR = np.float32(1e-30)
INT8 = 3  # onnx TensorProto.INT8
FLOAT = 1


def make_dense_at_load(g: GraphBuilder, name: str, weight) -> str:
    """Load-time nodes: a Q4Tensor or Q8Tensor registered under `name` (as the other targets store
    it; a tied table is the very initializers the embedding reads) → float W [N, K]. The whole of W
    is dequantized by the embedding's own gather over every row, so the block formats (zero points,
    GGUF block minimums) are decoded in one place. Made once per name."""
    from ruvdllm_export.onnx_graph.embedding import make_quantized_gather  # embedding imports linear

    key = f"dense:{name}"
    if key not in g.shared:
        n, k = weight.shape
        every_row = g.const(np.arange(n)[None], np.int32)  # [1, N]
        dense = make_quantized_gather(g, f"/load/{name}/dequantize", name, every_row, weight)  # [1, N, K]
        g.shared[key] = g.op("Reshape", [dense, g.const([n, k])], f"/load/{name}/dequantize/Reshape_rows")
    return g.shared[key]


def make_widened_linear(g: GraphBuilder, scope: str, name: str, x: str, weight) -> str:
    """y = x Wᵀ as a float32 MatMul over Wᵀ made at load (exactly the held weights)."""
    key = f"widened:{name}"
    if key not in g.shared:
        dense = make_dense_at_load(g, name, weight)
        g.shared[key] = g.op(
            "Transpose", [dense], f"/load/{name}/Transpose", outputs=[f"{name}.widened.T"], perm=[1, 0]
        )
    return g.op("MatMul", [x, g.shared[key]], f"{scope}/MatMul")


def make_int8_linear(g: GraphBuilder, scope: str, name: str, x: str, weight) -> str:
    """y ≈ x Wᵀ through the int8 GEMM, the int8 weights made at load."""
    key = f"int8:{name}"
    if key not in g.shared:
        g.shared[key] = make_int8_weights(g, name, make_dense_at_load(g, name, weight), weight.shape[0])
    return make_int8_matmul(g, scope, x, *g.shared[key])


def quantize_per_row(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The numpy twin of the load-time int8 nodes: W [N, K] → (codes int8 [N, K], scales float32
    [N]) with W ≈ codes · scales[:, None], symmetric, |error| ≤ scale / 2."""
    w = np.asarray(w, np.float32)
    amax = np.maximum(np.abs(w).max(axis=1, keepdims=True), AMAX_FLOOR)
    codes = np.clip(np.rint(w * (np.float32(INT8_MAX) / amax)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes, (amax[:, 0] / np.float32(INT8_MAX)).astype(np.float32)


def make_int8_weights(g: GraphBuilder, name: str, w: str, n: int) -> tuple[str, str]:
    """Load-time nodes: float W [N, K] (a tensor computed from initializers) → (W8 int8 [K, N],
    scales float32 [N]), named `name`.int8 / `name`.int8_scales. All folded when the session loads."""
    scope = f"/load/{name}/int8"
    amax = g.op(
        "ReduceMax", [g.op("Abs", [w], f"{scope}/Abs"), g.const([1])], f"{scope}/ReduceMax", keepdims=1
    )
    amax = g.op("Max", [amax, g.const(AMAX_FLOOR, np.float32)], f"{scope}/Max_floor")
    inv = g.op("Div", [g.const(float(INT8_MAX), np.float32), amax], f"{scope}/Div")
    codes = g.op("Round", [g.op("Mul", [w, inv], f"{scope}/Mul")], f"{scope}/Round")
    limit = (g.const(-float(INT8_MAX), np.float32), g.const(float(INT8_MAX), np.float32))
    codes = g.op("Clip", [codes, *limit], f"{scope}/Clip")
    codes = g.op("Cast", [codes], f"{scope}/Cast", to=INT8)
    w8 = g.op("Transpose", [codes], f"{scope}/Transpose", outputs=[f"{name}.int8"], perm=[1, 0])
    scales = g.op("Div", [amax, g.const(float(INT8_MAX), np.float32)], f"{scope}/Div_scales")
    scales = g.op("Reshape", [scales, g.const([n])], f"{scope}/Reshape", outputs=[f"{name}.int8_scales"])
    return w8, scales


def make_int8_matmul(g: GraphBuilder, scope: str, x: str, w8: str, scales: str) -> str:
    """x [1, S, K] float → y [1, S, N] through the int8 GEMM (the forward half of the sketch above).
    x's quantization is made once per x (q/k/v and gate/up are packed already; o_proj and down_proj
    read their own x)."""
    key = f"dynamic_quantize:{x}"
    if key not in g.shared:
        g.shared[key] = g.op("DynamicQuantizeLinear", [x], f"{scope}/DynamicQuantizeLinear", outputs=3)
    x8, x_scale, x_zero = g.shared[key]
    acc = g.op("MatMulInteger", [x8, w8, x_zero], f"{scope}/MatMulInteger")
    acc = g.op("Cast", [acc], f"{scope}/Cast", to=FLOAT)
    scale = g.op("Mul", [scales, x_scale], f"{scope}/Mul_scales")
    return g.op("Mul", [acc, scale], f"{scope}/Mul")
