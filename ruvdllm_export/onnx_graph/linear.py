"""Linear layers: 4-bit MatMulNBits (or plain MatMul in fp32 mode) plus the low-rank side branches.

A linear `y = W x (+ b)` becomes

    x ─┬─ MatMulNBits(q4 W, packed zero points, bias) ───────────────┐
       ├─ Reshape[.., n_blocks, 32] ─ ReduceSum ─ MatMul(m'ᵀ) ───────┤  only when W has block mins
       ├─ MatMul(Aᵀ) ─ MatMul(Bᵀ) ───────────────────────────────────┤  static LoRA (conversion adapter)
       └─ MatMul(A_l) ─ Mul(slot weights) ─ MatMul(B_l) ─────────────┤  adapter bank (graph inputs)
                                                                     Add ─► y

Linears that read the same x (q/k/v, gate/up) are packed into one MatMulNBits over their stacked
rows with one block-min branch (`make_packed_linear`); their LoRA and bank branches stay per linear.

The optional gate [1, S, 1] switches the static LoRA per row: a row with gate 0 adds exactly 0, so
it computes the base model (the AR model the verified sampler checks drafts against).

The block-min branch is exact: writing W[n,k] = s·(q − z) + m'[n, k//32] with integer z gives
Σ_k W[n,k] x_k = MatMulNBits(x) + Σ_b m'[n,b] Σ_{k∈b} x_k. It keeps MatMulNBits on its fast
integer kernels, where float zero points (the other exact mapping of GGUF Q4_1) are ~20× slower on
CPU and have no WebGPU kernel (DESIGN.md). z is MatMulNBits' default 8, so the node has no
zero-points input (see `centre_block_offsets`).

What a forward costs on the CPU is mostly the bytes it reads (a 135M model at one token per forward
is memory-bound): the 4-bit weights with their scales, the float block mins, the LoRA factors and
the bank factors. Extra nodes cost ~1 µs each; extra bytes cost ~0.1 ms per MB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ruvdllm_export.onnx_graph.graph import MS_DOMAIN, GraphBuilder
from ruvdllm_export.onnx_graph.q8 import Q8Tensor, SplitQ8Tensor, dequantize_q8, dequantize_split_q8
from ruvdllm_export.quant.q4 import (
    BLOCK,
    Q4Tensor,
    concat_rows,
    dequantize_q4,
    pack_zero_points,
    quantize_q4,
)

Weight = np.ndarray | Q4Tensor | Q8Tensor | SplitQ8Tensor
# Linears stored as 4-bit blocks whose dense weights the session makes at load (the wasm target)
WEIGHTS_MADE_AT_LOAD = ("widened", "int8")
DEFAULT_ZERO_POINT = 8  # MatMulNBits' zero point for 4 bits when the node has no zero_points input


@dataclass(frozen=True)
class LinearFormat:
    """How linears are written into the graph."""

    quantization: str = "q4"  # "q4": MatMulNBits; "widened" / "int8": wasm_linear.py; "fp32": MatMul
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
    canonical weight name). Returns y [1, S, out]."""
    part = LinearPart(
        scope=scope, name=name, weight=weight, bias=bias, bank=bank, lora=lora, lora_gate=lora_gate
    )
    return make_packed_linear(g, scope, name, [part], x, fmt)[0]


@dataclass(frozen=True)
class LinearPart:
    """One linear of a packed group (or a linear alone), with what hangs off it."""

    scope: str  # its own namespace, for its side branches (/model/layers.0/attn/q_proj)
    name: str  # canonical weight name (its LoRA initializers are named after it)
    weight: Weight
    bias: np.ndarray | None = None
    bank: AdapterBank | None = None
    lora: StaticLora | None = None
    lora_gate: str | None = None  # [1, S, 1]: per row, 1 = the static LoRA on, 0 = off (the base model)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]


def make_packed_linear(
    g: GraphBuilder,
    scope: str,
    name: str,
    parts: list[LinearPart],
    x: str,
    fmt: LinearFormat,
    *,
    split: bool = True,
) -> list[str]:
    """Linears that read the same x as one matmul over their stacked rows (q/k/v, gate/up):

        x ─┬─ MatMulNBits([W_q; W_k; W_v], bias) ─────────────────────────────────┐
           └─ side branch: static LoRA of every part + block mins, one MatMul pair ┴ Add ─► y [1,S,ΣN]
        y ─Split─► y_q, y_k, y_v ─ Add(bank delta) per part that has a bank

    One node reads all the weights (fewer, larger kernels), and x's block sums and LoRA down-
    projections are computed once for the pack (`make_side_branch`). Adapter-bank deltas are added
    per part after the Split, under the part's own scope; the Split is skipped when the caller takes
    the packed y (`split` False) and no part has a bank. Returns one output per part, or [y].
    """
    if len(parts) > 1 and any(isinstance(p.weight, Q8Tensor | SplitQ8Tensor) for p in parts):
        raise ValueError(f"{scope}: only 4-bit or float linears can be packed")
    if fmt.quantization not in ("q4", "fp32", *WEIGHTS_MADE_AT_LOAD):
        raise ValueError(f"unknown quantization {fmt.quantization!r}")
    bias = _packed_bias(parts)
    base, q = _packed_base(g, scope, name, parts, x, fmt, bias)
    y = _add_all(g, scope, [base, *make_side_branch(g, scope, name, x, parts, q)])
    if fmt.quantization != "q4" and bias is not None:  # MatMulNBits adds it in the kernel
        b = g.initializer(name.removesuffix(".weight") + ".bias", bias)
        y = g.op("Add", [y, b], f"{scope}/Add_bias")
    banks = [make_adapter_bank_delta(g, p.scope, x, p.bank) if p.bank else None for p in parts]
    if len(parts) == 1:
        return [_add_all(g, f"{scope}/bank", [y, banks[0]]) if banks[0] else y]
    if not split and not any(banks):
        return [y]
    sizes = g.const([p.out_features for p in parts])
    outs = g.op("Split", [y, sizes], f"{scope}/Split", outputs=len(parts), axis=-1)
    return [
        g.op("Add", [out, bank], f"{p.scope}/Add_bank") if bank else out
        for p, out, bank in zip(parts, outs, banks, strict=True)
    ]


def _packed_base(g, scope, name, parts, x, fmt, bias) -> tuple[str, QuantizedNames | None]:
    """The matmul over the stacked weights (MatMulNBits, or MatMul in fp32 mode)."""
    if fmt.quantization == "fp32":
        w_t = np.concatenate([as_float(p.weight) for p in parts]).T  # [in, ΣN]: MatMul's B
        return g.op("MatMul", [x, g.initializer(f"{name}.T", w_t.copy())], f"{scope}/MatMul"), None
    if fmt.quantization in WEIGHTS_MADE_AT_LOAD:  # the wasm target's: dense weights made at load
        from ruvdllm_export.onnx_graph import wasm_linear  # it reuses the embedding's gather (imports us)

        w = parts[0].weight if len(parts) == 1 else concat_rows([as_q4(p.weight) for p in parts])
        w = w if isinstance(w, Q4Tensor | Q8Tensor) else as_q4(w)
        make = (
            wasm_linear.make_widened_linear if fmt.quantization == "widened" else wasm_linear.make_int8_linear
        )
        return make(g, scope, name, x, w), None
    weight = parts[0].weight
    if isinstance(weight, SplitQ8Tensor):
        doubled = make_doubled_input(g, scope, x, weight)
        return make_matmul_nbits(g, scope, name, doubled, weight.q4, fmt.accuracy_level, bias)
    if len(parts) == 1:
        w = weight if isinstance(weight, Q8Tensor) else as_q4(weight)
    else:
        w = concat_rows([as_q4(p.weight) for p in parts])
    return make_matmul_nbits(g, scope, name, x, w, fmt.accuracy_level, bias)


# Block sums as x @ (0/1 block indicator [K, n_blocks]) ride in the side branch's first matmul up to
# this many blocks (K = 1024: the indicator grows as K²/8 bytes, 41 KB at K = 576); wider inputs
# (down_proj's 1536) take Reshape + ReduceSum and their own MatMul, as do tables whose block mins
# the embedding already holds.
INDICATOR_MAX_BLOCKS = 32


def make_side_branch(
    g: GraphBuilder, scope: str, name: str, x: str, parts: list[LinearPart], q: QuantizedNames | None
) -> list[str]:
    """Everything low-rank beside the base matmul, as one MatMul pair (the terms to add):

        x ─MatMul(side_a [K, Σr + nb])─► h [1,S,Σr+nb] ─MatMul(side_b [Σr + nb, ΣN])─► [1,S,ΣN]

        side_a = [A_qᵀ | A_kᵀ | A_vᵀ | block indicator]     static LoRA down-projections, block sums
        side_b = [B_q ⊕ B_k ⊕ B_v ; m'ᵀ]                    LoRA up-projections block-diagonal, mins

    h's first Σr columns are the LoRA activations (a per-position gate on the conversion adapter
    multiplies exactly those). Both matrices are float and exact: the LoRA is never re-quantized,
    and the block-min correction Σ_b m'[n,b]·Σ_{k∈b} x_k is the indicator product. One pass over x
    and one pair of small kernels per pack instead of two per linear plus the block-sum ops: -10%
    per forward at one row on SmolLM2 (benchmarks/README.md).

    On disk the pieces stay apart and compact (float16 LoRA factors, one indicator per input
    width, no zeros); Concat/Pad/Cast nodes over initializers join them, and onnxruntime folds
    those when the session loads, so a forward reads the same two float32 matrices.
    """
    lora_parts = [p for p in parts if p.lora is not None]
    lora_columns = sum(p.lora.a.shape[0] for p in lora_parts)  # h's first columns: the LoRA activations
    a_cols, b_rows, terms, width = [], [], [], lora_columns
    if lora_parts:
        a_t = np.concatenate([p.lora.a.T for p in lora_parts], axis=1)  # [K, Σr]
        a_cols.append(g.float_initializer(f"{name}.lora_a.T", a_t))
        b_rows.append(_lora_up_rows(g, name, parts))
    if q is not None and q.mins is not None:
        if q.n_blocks <= INDICATOR_MAX_BLOCKS and mins_t_key(q.name) not in g.shared:
            a_cols.append(_block_indicator(g, q.k, q.n_blocks))
            b_rows.append(mins_t_initializer(g, q))
            width += q.n_blocks
        else:
            terms.append(make_block_min_correction(g, scope, x, mins_t_initializer(g, q), q.k, q.n_blocks))
    if a_cols:
        a = _load_time_concat(g, f"{name}.side_a", a_cols, axis=1)
        b = _load_time_concat(g, f"{name}.side_b", b_rows, axis=0)
        h = g.op("MatMul", [x, a], f"{scope}/side/MatMul_a")
        gate = next((p.lora_gate for p in lora_parts if p.lora_gate), None)
        if gate:
            h = _gate_lora_columns(g, scope, h, gate, lora_columns, width)
        terms.insert(0, g.op("MatMul", [h, b], f"{scope}/side/MatMul_b"))
    return terms


def _lora_up_rows(g: GraphBuilder, name: str, parts: list[LinearPart]) -> str:
    """The LoRA up-projections of a pack as side_b's first rows [Σr, ΣN], block diagonal: part p's
    Bᵀ [r, N_p] at its own output columns, zeros elsewhere. The file holds only the Bᵀ blocks; the
    zeros are Pad-ded in at load (folded), so they cost memory but no bytes on disk."""
    n = sum(p.out_features for p in parts)
    blocks, offset = [], 0
    for p in parts:
        if p.lora is not None:
            block = g.float_initializer(f"{p.name}.lora_b.T", p.lora.b.T)  # [r, N_p]
            if p.out_features != n:
                pads = g.const([0, offset, 0, n - offset - p.out_features])
                block = g.op("Pad", [block, pads], f"/load/{p.name}.lora_b.T/Pad")
            blocks.append(block)
        offset += p.out_features
    return _load_time_concat(g, f"{name}.lora_b.T", blocks, axis=0)


def _block_indicator(g: GraphBuilder, k: int, n_blocks: int) -> str:
    """0/1 [K, n_blocks], 1 where input k lies in block b: x @ it is x's block sums. One initializer
    for the whole graph per shape (every pack reading a K-wide x uses the same one)."""
    key = f"block_indicator:{k}:{n_blocks}"
    if key not in g.shared:
        indicator = np.zeros((k, n_blocks), np.float32)
        indicator[np.arange(k), np.arange(k) // BLOCK] = 1
        g.shared[key] = g.float_initializer(f"/model/block_indicator_{k}x{n_blocks}", indicator)
    return g.shared[key]


def _load_time_concat(g: GraphBuilder, name: str, pieces: list[str], axis: int) -> str:
    """Weights joined along `axis` by a Concat of initializers (folded when the session loads),
    named `name`; a single piece is returned as it is."""
    if len(pieces) == 1:
        return pieces[0]
    return g.op("Concat", pieces, f"/load/{name}/Concat", outputs=[name], axis=axis)


def _gate_lora_columns(g: GraphBuilder, scope: str, h: str, gate: str, lora: int, width: int) -> str:
    """h [1,S,width] with its first `lora` columns (the static LoRA's activations) multiplied by the
    row's gate [1,S,1] and the rest (block sums) kept: h ⊙ (gate·m + (1 − m)), m = 1 on LoRA columns.
    A row with gate 0 then adds exactly no LoRA term.

    The column scale depends only on the gate and the column layout, so it is built once per layout
    for the whole graph (every layer's q/k/v pack has the same one): one Mul per pack per forward
    instead of three, -180 nodes on SmolLM2."""
    if lora == width:
        return g.op("Mul", [h, gate], f"{scope}/side/Mul_gate")
    key = f"gate_columns:{gate}:{lora}:{width}"
    if key not in g.shared:
        on = np.zeros(width, np.float32)
        on[:lora] = 1
        shared = f"/model/adapter_gate/columns_{lora}_of_{width}"
        scale = g.op("Mul", [gate, g.const(on, np.float32)], f"{shared}/Mul")
        g.shared[key] = g.op("Add", [scale, g.const(1 - on, np.float32)], f"{shared}/Add_kept")
    return g.op("Mul", [h, g.shared[key]], f"{scope}/side/Mul_gate")


def _packed_bias(parts: list[LinearPart]) -> np.ndarray | None:
    if all(p.bias is None for p in parts):
        return None
    return np.concatenate(
        [np.zeros(p.out_features, np.float32) if p.bias is None else p.bias.astype(np.float32) for p in parts]
    )


def _add_all(g: GraphBuilder, scope: str, terms: list[str]) -> str:
    """terms[0] + terms[1] + ... as a chain of Adds (Add has a kernel on every execution provider)."""
    y = terms[0]
    for i, term in enumerate(terms[1:]):
        y = g.op("Add", [y, term], f"{scope}/Add_{i}")
    return y


@dataclass(frozen=True)
class QuantizedNames:
    """Initializer names of one block-quantized matrix, shared by every node that reads it (the
    tied token table feeds both the embedding Gather and the head's MatMulNBits)."""

    name: str  # canonical weight name
    bits: int
    n: int
    k: int
    n_blocks: int
    packed: str  # uint8 [N, n_blocks, 32*bits/8]
    scales: str  # float32 [N, n_blocks]
    zero_points: str | None  # MatMulNBits' zero_points input (4 bits: two per byte); None = default
    mins: np.ndarray | None  # float32 [N, n_blocks]: block offsets left after centring (not stored)


def register_quantized(g: GraphBuilder, name: str, w: Q4Tensor | Q8Tensor) -> QuantizedNames:
    """Add a quantized matrix's initializers once; later calls with the same name reuse them.
    Block mins become an initializer only where a reader asks (`mins_t_initializer`)."""
    key = f"quantized:{name}"
    if key in g.shared:
        return g.shared[key]
    n, k = w.shape
    bits = 4 if isinstance(w, Q4Tensor) else 8
    packed = g.initializer(f"{name}.q{bits}", w.packed)
    scales = g.float_initializer(f"{name}.scales", w.scales)  # float16 on disk when exact (GGUF's are)
    zero_points = mins = None
    if bits == 4:
        zp, mins = w.zero_points, w.mins
        if mins is not None:
            zp, mins = centre_block_offsets(w.scales, zp, mins)
        if not np.all(zp == DEFAULT_ZERO_POINT):  # the default: omit the input
            zero_points = g.initializer(f"{name}.zero_points", pack_zero_points(zp))
    names = QuantizedNames(name, bits, n, k, w.n_blocks, packed, scales, zero_points, mins)
    g.shared[key] = names
    return names


def mins_t_key(name: str) -> str:
    return f"mins_t:{name}"


def mins_t_initializer(g: GraphBuilder, q: QuantizedNames) -> str:
    """The block mins transposed, float32 [n_blocks, N], added once (the embedding's Gather and
    the head of a tied table share it)."""
    key = mins_t_key(q.name)
    if key not in g.shared:
        g.shared[key] = g.float_initializer(f"{q.name}.mins_t", np.ascontiguousarray(q.mins.T))
    return g.shared[key]


def centre_block_offsets(
    scales: np.ndarray, zero_points: np.ndarray, mins: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite W = s·(q − zp) + m as s·(q − 8) + m' with m' = m + s·(8 − zp): the same weights,
    centred on MatMulNBits' default zero point, so the linear needs no zero-points input.

    Why 8 and not zero points 0: with zero points 0 MatMulNBits' part would be the large Σ s·q·x
    that the min branch then almost cancels, and accuracy_level 4's int8 activations, whose error
    scales with that part, dropped SmolLM2's top-1 agreement to 86%. Codes centred on 8 keep
    |q − 8| <= 8 in every block. Why 8 and not each block's nearest integer zero (what this did
    before): the same top-1 agreement (96.83% both, `benchmarks/accuracy_bench.py`'s 2,048 tokens),
    and onnxruntime's one-row kernels ran 14-23% faster without zero points on an AVX2 CPU
    (benchmarks/README.md, "An AVX2 CPU without VNNI")."""
    s64 = scales.astype(np.float64)
    zp64 = zero_points.astype(np.float64)
    z = np.full_like(zero_points, DEFAULT_ZERO_POINT, dtype=np.uint8)
    remainder = mins.astype(np.float64) + s64 * (DEFAULT_ZERO_POINT - zp64)
    return z, remainder.astype(np.float32)


def make_matmul_nbits(
    g: GraphBuilder,
    scope: str,
    name: str,
    x: str,
    w: Q4Tensor | Q8Tensor,
    accuracy_level: int,
    bias: np.ndarray | None = None,
) -> tuple[str, QuantizedNames]:
    """The MatMulNBits node (bias added by the kernel); block mins are the side branch's job."""
    q = register_quantized(g, name, w)
    inputs = [x, q.packed, q.scales, q.zero_points or ""]
    if bias is not None:  # inputs 4 (g_idx, deprecated) and 5 (bias)
        inputs += ["", g.initializer(name.removesuffix(".weight") + ".bias", bias)]
    while not inputs[-1]:  # trailing optional inputs left out
        inputs.pop()
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
    return y, q


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
    a_t = g.float_initializer(f"{name}.lora_a.T", lora.a.T)
    b_t = g.float_initializer(f"{name}.lora_b.T", lora.b.T)
    h = g.op("MatMul", [x, a_t], f"{scope}/lora/MatMul_a")
    if gate:
        h = g.op("Mul", [h, gate], f"{scope}/lora/Mul_gate")
    return g.op("MatMul", [h, b_t], f"{scope}/lora/MatMul_b")
