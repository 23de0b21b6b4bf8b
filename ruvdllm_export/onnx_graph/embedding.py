"""Token embedding: a Gather of float rows, or of block-quantized rows dequantized in the graph.

A quantized table is stored once, in MatMulNBits' layout, and shared with a tied LM head: the
Gather reads the packed rows of the S tokens and dequantizes only those (S × hidden numbers).
We chose plain ops over `com.microsoft.GatherBlockQuantized` because that op has no block-min
input (GGUF Q4_1 tables need one) and its kernel coverage outside CPU/CUDA is not established;
nibbles are split with float Floor/Mul rather than uint8 bit operations, which WebGPU lacks.
"""

from __future__ import annotations

import numpy as np

from ruvdllm_export.onnx_graph.graph import GraphBuilder
from ruvdllm_export.onnx_graph.linear import (
    StaticLora,
    Weight,
    as_float,
    mins_t_initializer,
    register_quantized,
)
from ruvdllm_export.onnx_graph.q8 import ZERO_POINT as Q8_ZERO_POINT
from ruvdllm_export.onnx_graph.q8 import Q8Tensor, SplitQ8Tensor
from ruvdllm_export.quant.q4 import BLOCK, Q4Tensor
from ruvdllm_export.spec import EMBED

SCOPE = "/model/embed_tokens"


def make_embedding(g: GraphBuilder, name: str, input_ids: str, table: Weight) -> str:
    """input_ids [1, S] → hidden [1, S, hidden]."""
    if isinstance(table, SplitQ8Tensor):
        return make_split_gather(g, SCOPE, name, input_ids, table)
    if not isinstance(table, Q4Tensor | Q8Tensor):
        weight = g.initializer(name, as_float(table))
        return g.op("Gather", [weight, input_ids], f"{SCOPE}/Gather", axis=0)
    return make_quantized_gather(g, SCOPE, name, input_ids, table)


def make_split_gather(g: GraphBuilder, scope: str, name: str, ids: str, table: SplitQ8Tensor) -> str:
    """Rows of an 8-bit table stored as two 4-bit halves: dequantize both, add them.

    ids ─quantized gather─► [1,S,2·Kp] ─Reshape[1,S,2,Kp]─ReduceSum(axis 2)─► [1,S,Kp] ─(Slice K)
    """
    halves = make_quantized_gather(g, scope, name, ids, table.q4)
    padded_k = table.n_blocks * BLOCK
    halves = g.op("Reshape", [halves, g.const([0, 0, 2, padded_k])], f"{scope}/split_q8/Reshape")
    rows = g.op("ReduceSum", [halves, g.const([2])], f"{scope}/split_q8/ReduceSum", keepdims=0)
    if padded_k != table.in_features:
        ends = g.const([table.in_features])
        rows = g.op("Slice", [rows, g.const([0]), ends, g.const([-1])], f"{scope}/split_q8/Slice_padding")
    return rows


def make_embedding_lora(
    g: GraphBuilder, ids: str, hidden: str, lora: StaticLora, gate: str | None = None
) -> str:
    """A static LoRA on the embedding (PEFT layout: a [r, vocab], b [hidden, r], scale in b),
    switched per row by the optional gate [1,S,1] as on the linears:

    ids ─Gather(aᵀ [vocab, r])─► [1,S,r] ─(Mul gate)─ MatMul(bᵀ [r, hidden])─► delta ─Add(hidden)─►
    """
    scope = f"{SCOPE}/lora"
    a_t = g.float_initializer(f"{EMBED}.lora_a.T", lora.a.T)
    b_t = g.float_initializer(f"{EMBED}.lora_b.T", lora.b.T)
    rows = g.op("Gather", [a_t, ids], f"{scope}/Gather_a", axis=0)
    if gate:
        rows = g.op("Mul", [rows, gate], f"{scope}/Mul_gate")
    delta = g.op("MatMul", [rows, b_t], f"{scope}/MatMul_b")
    return g.op("Add", [hidden, delta], f"{scope}/Add")


def make_quantized_gather(
    g: GraphBuilder, scope: str, name: str, ids: str, table: Q4Tensor | Q8Tensor
) -> str:
    """Rows of a block-quantized table, dequantized:

    ids ─Gather(packed)─► [1,S,nb,bytes] ─Cast─► codes [1,S,nb,32] (4 bits: split nibbles)
    ids ─Gather(scales)─► [1,S,nb,1] ┐
    ids ─Gather(zero points)─► ──────┤  row = (codes − zp) · scale (+ min)  ─Reshape─► [1,S,nb·32] ─(Slice K)
    ids ─Gather(minsᵀ, axis 1)─► ────┘
    """
    q = register_quantized(g, name, table)
    n_blocks = table.n_blocks
    raw = g.op("Gather", [q.packed, ids], f"{scope}/Gather_packed", axis=0)
    raw = g.op("Cast", [raw], f"{scope}/Cast_packed", to=1)
    codes = _split_nibbles(g, f"{scope}/codes", raw) if q.bits == 4 else raw  # [1,S,nb,32]

    if q.bits == 8:
        zero = g.const(float(Q8_ZERO_POINT), np.float32)
    elif q.zero_points is None:
        zero = g.const(8.0, np.float32)
    else:
        packed_zp = g.op("Gather", [q.zero_points, ids], f"{scope}/Gather_zero_points", axis=0)
        packed_zp = g.op("Cast", [packed_zp], f"{scope}/Cast_zero_points", to=1)  # [1,S,ceil(nb/2)]
        zp = _split_nibbles(g, f"{scope}/zero_points", packed_zp)  # [1,S,2*ceil(nb/2)]: block order
        zp = g.op(
            "Slice", [zp, g.const([0]), g.const([n_blocks]), g.const([-1])], f"{scope}/zero_points/Slice"
        )
        zero = g.op("Unsqueeze", [zp, g.const([-1])], f"{scope}/zero_points/Unsqueeze")
    scales = g.op("Gather", [q.scales, ids], f"{scope}/Gather_scales", axis=0)
    scales = g.op("Unsqueeze", [scales, g.const([-1])], f"{scope}/scales/Unsqueeze")
    rows = g.op("Sub", [codes, zero], f"{scope}/Sub_zero_points")
    rows = g.op("Mul", [rows, scales], f"{scope}/Mul_scales")
    if q.mins is not None:
        mins = g.op("Gather", [mins_t_initializer(g, q), ids], f"{scope}/Gather_mins", axis=1)  # [nb,1,S]
        mins = g.op("Transpose", [mins], f"{scope}/mins/Transpose", perm=[1, 2, 0])
        mins = g.op("Unsqueeze", [mins, g.const([-1])], f"{scope}/mins/Unsqueeze")
        rows = g.op("Add", [rows, mins], f"{scope}/Add_mins")
    hidden = g.op("Reshape", [rows, g.const([0, 0, n_blocks * BLOCK])], f"{scope}/Reshape")
    if table.in_features != n_blocks * BLOCK:
        hidden = g.op(
            "Slice",
            [hidden, g.const([0]), g.const([table.in_features]), g.const([-1])],
            f"{scope}/Slice_padding",
        )
    return hidden


def _split_nibbles(g: GraphBuilder, scope: str, packed: str) -> str:
    """Bytes (as float) [..., n] → nibbles [..., 2n], low nibble first (MatMulNBits order).

    b ─Mul(1/16)─Floor─► hi ─┐
    b ─Sub(16·hi)──────► lo ─┴─ Unsqueeze, Concat(-1) ─► [..., n, 2] ─Reshape─► [..., 2n]
    """
    hi = g.op("Mul", [packed, g.const(1 / 16, np.float32)], f"{scope}/Mul_sixteenth")
    hi = g.op("Floor", [hi], f"{scope}/Floor")
    lo = g.op("Mul", [hi, g.const(16.0, np.float32)], f"{scope}/Mul_sixteen")
    lo = g.op("Sub", [packed, lo], f"{scope}/Sub_low")
    axis = g.const([-1])
    pair = g.op(
        "Concat",
        [
            g.op("Unsqueeze", [lo, axis], f"{scope}/Unsqueeze_low"),
            g.op("Unsqueeze", [hi, axis], f"{scope}/Unsqueeze_high"),
        ],
        f"{scope}/Concat",
        axis=-1,
    )
    # Flatten the last two axes: keep every leading axis, merge (n, 2).
    shape = g.op("Shape", [packed], f"{scope}/Shape")
    lead = g.op("Slice", [shape, g.const([0]), g.const([-1])], f"{scope}/Slice_lead")
    target = g.op("Concat", [lead, g.const([-1])], f"{scope}/Concat_shape", axis=0)
    return g.op("Reshape", [pair, target], f"{scope}/Reshape")
