"""Linears for onnxruntime-web's WebAssembly build (the wasm target): float32 MatMuls over weights
widened from the 4-bit (8-bit for the table) blocks when the session is created.

Why: in onnxruntime-web 1.30's wasm build MatMulNBits is ~17x slower than the native kernel (it
dequantizes the weights on every call), while a float32 MatMul is 6-10x faster than it and the int8
GEMM (MatMulInteger) faster still (benchmarks/browser_ops.py, benchmarks/README.md "Browser").

    "widened" (the wasm default): exact, 4 bytes per weight in memory, the blocks on disk
      shipped:  <graph>.widened.bin (codes, scales, zero points, mins) + .widened.json (index)
      load:     the runtime widens them (runtime/widening.py, web/js/widen.js) into the in-memory
                external data file <graph>.widened.f32 that Wᵀ [K, N] float32 points at
      forward:  x ─MatMul(Wᵀ)─► y;  a tied table's embedding: ids ─Gather(Wᵀ, axis 1)─Transpose─►

    "int8": 1 byte per weight, activations quantized to 8 bits per tensor at every forward
      load:     W ─ReduceMax|·| per row─► amax [N, 1];  s = amax / 127
                W ─Mul(127 / amax)─Round─Clip[-127, 127]─Cast(int8)─Transpose─► W8 [K, N]
      forward:  x ─DynamicQuantizeLinear─► x8 (uint8), x_scale, x_zero
                MatMulInteger(x8, W8, x_zero) ─Cast(float)─Mul(x_scale · s)─► y

"widened" first made W with nodes onnxruntime folds at load; the folding kept ~12 float copies of
every weight alive at once (5.8 GB for SmolLM2; onnxruntime-web failed with bad_alloc), hence the
widening outside the graph. int8 still folds at load (fine for small models): one activation scale
per tensor is too coarse for SmolLM2's outlier channels (top-1 agreement 64.7% on the validation
paragraph, against 96.8% at accuracy level 4's per-block int8), so the export's validation refuses
it there; it stays selectable (`--quantization int8`) for models without such outliers.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from onnx import TensorProto

from runtime import widening
from ruvdllm_export.onnx_graph.graph import GraphBuilder
from ruvdllm_export.onnx_graph.q8 import ZERO_POINT as Q8_ZERO_POINT
from ruvdllm_export.onnx_graph.q8 import Q8Tensor
from ruvdllm_export.quant.q4 import Q4Tensor, pack_zero_points

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


class WidenedBlocks:
    """The blocks file and index the runtime widens (runtime/widening.py), written as the graph is
    built. With a graph path the widened initializers are external data in the never-shipped
    `<graph>.widened.f32`; without one (a graph built in memory: tests, references) the blocks stay
    in memory and the initializers are the widened floats themselves, made by the same code."""

    def __init__(self, graph: Path | str | None = None):
        self.graph = Path(graph) if graph is not None else None
        self._file = open(self._blocks_path, "wb") if self.graph else io.BytesIO()  # noqa: SIM115
        self.tensors: list[dict] = []
        self.floats_bytes = 0

    @property
    def _blocks_path(self) -> Path:
        return self.graph.with_name(self.graph.name + widening.BLOCKS_SUFFIX)

    def _put(self, array: np.ndarray) -> list:
        pad = -self._file.tell() % widening.ALIGN
        self._file.write(b"\0" * pad)
        offset = self._file.tell()
        data = np.ascontiguousarray(array).tobytes()
        self._file.write(data)
        return [offset, len(data)]

    def add(self, name: str, weight: Q4Tensor | Q8Tensor) -> dict:
        """Write `weight`'s blocks; -> its index entry (Wᵀ [K, N] at `offset` of the float file).
        The stored zero points and minimums are those the graph's own dequantization reads
        (linear.register_quantized: GGUF minimums centred onto the default zero point 8)."""
        from ruvdllm_export.onnx_graph.linear import (  # linear imports us
            DEFAULT_ZERO_POINT,
            centre_block_offsets,
        )

        n, k = weight.shape
        entry = {"name": name, "rows": n, "cols": k, "blocks": weight.n_blocks, "offset": self.floats_bytes}
        entry["codes"] = self._put(weight.packed)
        scales = np.asarray(weight.scales, np.float32)
        half = scales.astype(np.float16)
        exact_half = np.array_equal(half.astype(np.float32), scales)  # GGUF's scales are float16
        entry["scales"] = [*self._put(half if exact_half else scales), "float16" if exact_half else "float32"]
        entry["zero_points"] = entry["mins"] = None
        if isinstance(weight, Q8Tensor):
            entry["bits"], entry["zero"] = 8, Q8_ZERO_POINT
        else:
            zp, mins = weight.zero_points, weight.mins
            if mins is not None:
                zp, mins = centre_block_offsets(weight.scales, zp, mins)
                entry["mins"] = self._put(np.asarray(mins, np.float32))
            entry["bits"], entry["zero"] = 4, DEFAULT_ZERO_POINT
            if not np.all(zp == DEFAULT_ZERO_POINT):
                entry["zero_points"] = self._put(pack_zero_points(zp))
        self.tensors.append(entry)
        self.floats_bytes += n * k * 4
        return entry

    def widen(self, entry: dict) -> np.ndarray:
        """Wᵀ of an entry written to the in-memory blocks."""
        return widening.widen_tensor(entry, self._file.getbuffer())

    def close(self) -> None:
        if self.graph is None:
            return
        self._file.close()
        index = {
            "format": widening.FORMAT,
            "blocks": self._blocks_path.name,
            "blocks_bytes": self._blocks_path.stat().st_size,
            "floats": self.graph.name + widening.FLOATS_SUFFIX,
            "floats_bytes": self.floats_bytes,
            "tensors": self.tensors,
        }
        widening.index_path(self.graph).write_text(json.dumps(index, indent=1))


def widened_weight(g: GraphBuilder, name: str, weight) -> str:
    """Wᵀ [K, N] float32 of a Q4Tensor or Q8Tensor registered under `name`, made once per name (a
    tied table's head and embedding share it)."""
    key = f"widened:{name}"
    if key not in g.shared:
        blocks = g.shared.setdefault("widened_blocks", WidenedBlocks())
        entry = blocks.add(f"{name}.widened.T", weight)
        if blocks.graph is None:
            g.shared[key] = g.initializer(entry["name"], blocks.widen(entry))
        else:
            g.shared[key] = g.external_initializer(
                entry["name"], TensorProto.FLOAT, [entry["cols"], entry["rows"]],
                blocks.graph.name + widening.FLOATS_SUFFIX, entry["offset"], entry["rows"] * entry["cols"] * 4,
            )  # fmt: skip
    return g.shared[key]


def make_widened_linear(g: GraphBuilder, scope: str, name: str, x: str, weight) -> str:
    """y = x Wᵀ as a float32 MatMul over the widened weights (exactly the held weights)."""
    return g.op("MatMul", [x, widened_weight(g, name, weight)], f"{scope}/MatMul")


def make_widened_gather(g: GraphBuilder, scope: str, name: str, ids: str, table) -> str:
    """ids [1, S] → rows [1, S, K] of a tied table read from the head's widened Wᵀ, so the table's
    blocks are shipped once:  ids ─Gather(Wᵀ [K, N], axis 1)─► [K, 1, S] ─Transpose─► [1, S, K]"""
    cols = g.op("Gather", [widened_weight(g, name, table), ids], f"{scope}/Gather_widened", axis=1)
    return g.op("Transpose", [cols], f"{scope}/Transpose_widened", perm=[1, 2, 0])


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
