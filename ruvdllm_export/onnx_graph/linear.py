"""Linear layers: 4-bit MatMulNBits (or plain MatMul in fp32 mode) plus the low-rank side branches.

A linear `y = W x (+ b)` becomes

    x ─┬─ MatMulNBits(q4 W, packed zero points) ────────────────────┐
       ├─ Reshape[.., n_blocks, 32] ─ ReduceSum ─ MatMul(m'ᵀ) ───────┤  only when W has block mins
       ├─ MatMul(A_l) ─ Mul(slot weights) ─ MatMul(B_l) ─────────────┤  adapter bank (graph inputs)
       └─ MatMul(Aᵀ) ─(Mul gate)─ MatMul(Bᵀ) ────────────────────────┤  static LoRA (conversion adapter)
                                                                     Add ─► y (+ bias)

The optional gate [1, S, 1] switches the static LoRA per row: a row with gate 0 adds exactly 0, so
it computes the base model (the AR model the verified sampler checks drafts against).

The block-min branch is exact: writing W[n,k] = s·(q − z) + m'[n, k//32] with integer z gives
Σ_k W[n,k] x_k = MatMulNBits(x) + Σ_b m'[n,b] Σ_{k∈b} x_k. It keeps MatMulNBits on its fast
integer kernels, where float zero points (the other exact mapping of GGUF Q4_1) are ~20× slower on
CPU and have no WebGPU kernel (DESIGN.md). z is the integer nearest the block's zero, so m' is a
small remainder (see `centre_block_offsets`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ruvdllm_export.onnx_graph.graph import MS_DOMAIN, GraphBuilder
from ruvdllm_export.onnx_graph.q8 import Q8Tensor, SplitQ8Tensor, dequantize_q8, dequantize_split_q8
from ruvdllm_export.quant.q4 import BLOCK, Q4Tensor, dequantize_q4, pack_zero_points, quantize_q4

Weight = np.ndarray | Q4Tensor | Q8Tensor | SplitQ8Tensor


@dataclass(frozen=True)
class LinearFormat:
    """How linears are written into the graph."""

    quantization: str = "q4"  # "q4": MatMulNBits; "fp32": plain MatMul (tests, size baseline)
    accuracy_level: int = 4  # MatMulNBits int8 activations: ~2.4x faster at M=1 on CPU (DESIGN.md)


@dataclass(frozen=True)
class AdapterBank:
    """A bank branch on one linear: graph inputs holding all layers' factors (the bank layout of
    runtime/artifact.py), and the per-position slot weights already repeated `rank` times
    ([1, S, slots*rank], shared by every bank)."""

    a: str  # graph input, float32 [layers, in, slots*rank]
    b: str  # graph input, float32 [layers, slots*rank, out]
    layer: int
    slot_weights: str


@dataclass(frozen=True)
class StaticLora:
    """A fixed float low-rank delta, B @ A with the scale folded into B (the conversion adapter),
    in the static layout of runtime/artifact.py."""

    a: np.ndarray  # [r, in]
    b: np.ndarray  # [out, r]


def as_q4(weight: Weight) -> Q4Tensor:
    """Keep exact Q4Tensors as they are; quantize float weights with the reference quantizer."""
    return weight if isinstance(weight, Q4Tensor) else quantize_q4(as_float(weight))


def as_float(weight: Weight) -> np.ndarray:
    if isinstance(weight, Q4Tensor):
        return dequantize_q4(weight)
    if isinstance(weight, Q8Tensor):
        return dequantize_q8(weight)
    if isinstance(weight, SplitQ8Tensor):
        return dequantize_split_q8(weight)
    return np.asarray(weight, np.float32)


def make_linear(
    g: GraphBuilder,
    scope: str,
    name: str,
    x: str,
    weight: Weight,
    fmt: LinearFormat,
    *,
    bias: np.ndarray | None = None,
    bank: AdapterBank | None = None,
    lora: StaticLora | None = None,
    lora_gate: str | None = None,
) -> str:
    """`scope` names the nodes (/model/layers.0/attn/q_proj), `name` the initializers (the
    canonical weight name); `lora_gate` [1, S, 1] switches the static LoRA per row. Returns
    y [1, S, out]."""
    if fmt.quantization == "q4" and isinstance(weight, SplitQ8Tensor):
        doubled = make_doubled_input(g, scope, x, weight)
        terms = make_quantized_matmul(g, scope, name, doubled, weight.q4, fmt.accuracy_level)
    elif fmt.quantization == "q4":
        w = weight if isinstance(weight, Q8Tensor) else as_q4(weight)
        terms = make_quantized_matmul(g, scope, name, x, w, fmt.accuracy_level)
    elif fmt.quantization == "fp32":
        w_t = g.initializer(f"{name}.T", as_float(weight).T.copy())  # [in, out]: MatMul's B
        terms = [g.op("MatMul", [x, w_t], f"{scope}/MatMul")]
    else:
        raise ValueError(f"unknown quantization {fmt.quantization!r}")
    if bank is not None:
        terms.append(make_adapter_bank_delta(g, scope, x, bank))
    if lora is not None:
        terms.append(make_static_lora_delta(g, scope, name, x, lora, lora_gate))
    y = terms[0]
    for i, term in enumerate(terms[1:]):
        y = g.op("Add", [y, term], f"{scope}/Add_{i}")
    if bias is not None:
        b = g.initializer(name.removesuffix(".weight") + ".bias", bias.astype(np.float32))
        y = g.op("Add", [y, b], f"{scope}/Add_bias")
    return y


@dataclass(frozen=True)
class QuantizedNames:
    """Initializer names of one block-quantized matrix, shared by every node that reads it (the
    tied token table feeds both the embedding Gather and the head's MatMulNBits)."""

    bits: int
    n: int
    k: int
    packed: str  # uint8 [N, n_blocks, 32*bits/8]
    scales: str  # float32 [N, n_blocks]
    zero_points: str | None  # MatMulNBits' zero_points input (4 bits: two per byte); None = default
    mins_t: str | None  # float32 [n_blocks, N] (block minimums, transposed for the correction MatMul)


def register_quantized(g: GraphBuilder, name: str, w: Q4Tensor | Q8Tensor) -> QuantizedNames:
    """Add a quantized matrix's initializers once; later calls with the same name reuse them."""
    key = f"quantized:{name}"
    if key in g.shared:
        return g.shared[key]
    n, k = w.shape
    bits = 4 if isinstance(w, Q4Tensor) else 8
    packed = g.initializer(f"{name}.q{bits}", w.packed)
    scales = g.initializer(f"{name}.scales", w.scales.astype(np.float32))
    zero_points = mins_t = None
    if bits == 4:
        zp, mins = w.zero_points, w.mins
        if mins is not None:
            zp, mins = centre_block_offsets(w.scales, zp, mins)
        if not np.all(zp == 8):  # 8 is MatMulNBits' default for 4 bits: omit the input
            zero_points = g.initializer(f"{name}.zero_points", pack_zero_points(zp))
        if mins is not None:
            mins_t = g.initializer(f"{name}.mins_t", np.ascontiguousarray(mins.T))
    names = QuantizedNames(bits, n, k, packed, scales, zero_points, mins_t)
    g.shared[key] = names
    return names


def centre_block_offsets(
    scales: np.ndarray, zero_points: np.ndarray, mins: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite W = s·(q − zp) + m as s·(q − z) + m' with the integer z = clip(round(zp − m/s), 0, 15)
    nearest the block's true zero and m' = m + s·(z − zp), the small remainder (|m'| <= s/2 unless
    the block lies entirely on one side of 0).

    Same weights, but MatMulNBits now sees ordinary centred 4-bit codes. With zero points 0 its part
    would be the large Σ s·q·x that the min branch then almost cancels, and accuracy_level 4's int8
    activations, whose error scales with that part, dropped SmolLM2's top-1 agreement to 86%."""
    s64 = scales.astype(np.float64)
    zp64 = zero_points.astype(np.float64)
    ratio = np.divide(mins, s64, out=np.zeros_like(s64), where=s64 > 0)
    z = np.where(s64 > 0, np.clip(np.round(zp64 - ratio), 0, 15), zp64)
    remainder = mins.astype(np.float64) + s64 * (z - zp64)
    return z.astype(np.uint8), remainder.astype(np.float32)


def make_quantized_matmul(
    g: GraphBuilder, scope: str, name: str, x: str, w: Q4Tensor | Q8Tensor, accuracy_level: int
) -> list[str]:
    """The MatMulNBits node and, for weights with block mins, the exact block-sum correction.
    Returns the terms to add."""
    q = register_quantized(g, name, w)
    inputs = [x, q.packed, q.scales] + ([q.zero_points] if q.zero_points else [])
    y = g.op(
        "MatMulNBits",
        inputs,
        f"{scope}/MatMulNBits",
        domain=MS_DOMAIN,
        K=q.k,
        N=q.n,
        bits=q.bits,
        block_size=BLOCK,
        accuracy_level=accuracy_level,
    )
    if q.mins_t is None:
        return [y]
    return [y, make_block_min_correction(g, scope, x, q.mins_t, q.k, w.n_blocks)]


def make_doubled_input(g: GraphBuilder, scope: str, x: str, weight: SplitQ8Tensor) -> str:
    """x [1,S,K] ─(Pad to n_blocks·32)─ Concat(x, x) ─► [1,S,2·n_blocks·32]: the input of a split table."""
    padded_k = weight.n_blocks * BLOCK
    if padded_k != weight.in_features:
        pad = g.const([0, 0, 0, 0, 0, padded_k - weight.in_features])
        x = g.op("Pad", [x, pad], f"{scope}/split_q8/Pad")
    return g.op("Concat", [x, x], f"{scope}/split_q8/Concat", axis=-1)


def make_block_min_correction(g: GraphBuilder, scope: str, x: str, mins_t: str, k: int, n_blocks: int) -> str:
    """Σ_b mins[n, b] · Σ_{k in block b} x_k for every output n.

        x [1,S,K] ─(Pad to n_blocks·32)─ Reshape [1,S,nb,32] ─ ReduceSum(-1) ─► [1,S,nb] ─ MatMul(minsᵀ [nb,N]) ─► [1,S,N]
    The block sums depend only on x, so linears reading the same x (q/k/v, gate/up) share them.
    """
    key = f"block_sums:{x}:{n_blocks}"
    if key not in g.shared:
        padded_k = n_blocks * BLOCK
        if padded_k != k:
            x = g.op("Pad", [x, g.const([0, 0, 0, 0, 0, padded_k - k])], f"{scope}/block_sums/Pad")
        blocks = g.op("Reshape", [x, g.const([0, 0, n_blocks, BLOCK])], f"{scope}/block_sums/Reshape")
        g.shared[key] = g.op(
            "ReduceSum", [blocks, g.const([-1])], f"{scope}/block_sums/ReduceSum", keepdims=0
        )
    return g.op("MatMul", [g.shared[key], mins_t], f"{scope}/block_mins/MatMul")


def make_adapter_bank_delta(g: GraphBuilder, scope: str, x: str, bank: AdapterBank) -> str:
    """Per-position mixture of the bank's slots: B_l (w ⊙ (A_l x)).

    bank.a ─Gather(layer)─► A_l [in, K·r]         bank.b ─Gather(layer)─► B_l [K·r, out]
    x [1,S,in] ─MatMul(A_l)─► [1,S,K·r] ─Mul(slot weights [1,S,K·r])─► ─MatMul(B_l)─► [1,S,out]
    """
    layer = g.const(bank.layer)  # scalar index: Gather drops the layer axis
    a = g.op("Gather", [bank.a, layer], f"{scope}/adapter/Gather_a", axis=0)
    b = g.op("Gather", [bank.b, layer], f"{scope}/adapter/Gather_b", axis=0)
    h = g.op("MatMul", [x, a], f"{scope}/adapter/MatMul_a")
    h = g.op("Mul", [h, bank.slot_weights], f"{scope}/adapter/Mul_weights")
    return g.op("MatMul", [h, b], f"{scope}/adapter/MatMul_b")


def make_static_lora_delta(
    g: GraphBuilder, scope: str, name: str, x: str, lora: StaticLora, gate: str | None = None
) -> str:
    """x ─MatMul(Aᵀ [in,r])─► [1,S,r] ─(Mul gate [1,S,1])─ MatMul(Bᵀ [r,out])─► [1,S,out]

    Float, never re-quantized. The gate multiplies the rank-r middle, the cheapest place to switch
    the branch per row."""
    a_t = g.initializer(f"{name}.lora_a.T", np.ascontiguousarray(lora.a.T.astype(np.float32)))
    b_t = g.initializer(f"{name}.lora_b.T", np.ascontiguousarray(lora.b.T.astype(np.float32)))
    h = g.op("MatMul", [x, a_t], f"{scope}/lora/MatMul_a")
    if gate:
        h = g.op("Mul", [h, gate], f"{scope}/lora/Mul_gate")
    return g.op("MatMul", [h, b_t], f"{scope}/lora/MatMul_b")
