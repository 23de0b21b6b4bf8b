"""Self-attention with block visibility, grouped KV heads and an in-graph KV cache.

Visibility comes from `block_ids`: chunk key j is visible to query i iff block_ids[j] <= block_ids[i],
and every past (cached) key is visible. It becomes one additive bias [1, 1, S, P+S] built once and
read by every layer. The cache is concatenated in the graph (present = past ++ chunk) so every
formulation returns the same present_key/value.

Formulations (GraphOptions.attention):
    "gqa"          com.microsoft.GroupQueryAttention with causal=0 and the visibility bias (onnxruntime
                   >= 1.31): grouped KV heads, RoPE inside, past in, present out, reading q/k/v
                   packed straight from the qkv matmul. One node per layer.
    "mha"          com.microsoft.MultiHeadAttention on the full present K/V (BNSH), KV heads expanded
                   to the query heads; its own past inputs are not used (DESIGN.md: they need both
                   present outputs wired, and we concatenate ourselves anyway).
    "attention23"  ONNX opset-23 Attention: native GQA, past in, present out.
    "matmul"       MatMul + Softmax with the query heads of a KV group stacked as rows (no KV copy);
                   runs on every EP (the WebGPU fallback).

With `GraphOptions.kv_buffer` (the cpu target's graphs) "gqa" attends over a key/value buffer the
runtime owns instead: past_key/value.{layer} is bound to the same buffer as
present_key/value.{layer}, the past is its first P positions (P + S given as seqlens_k /
total_sequence_length, since the buffer's length is not P), and the chunk's keys and values are
written after them in place. No forward copies the cache (the formulations above concatenate
past ++ chunk into a new present every forward: 12 MB at 128 positions on SmolLM2-135M), and
nothing is rebound per step. With `causal_only` as well (the AR graph) there is no visibility
bias: GroupQueryAttention's own causal masking.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import helper

from runtime import artifact
from ruvdllm_export.onnx_graph.context import BuildContext
from ruvdllm_export.onnx_graph.graph import FLOAT, INT32, INT64, MS_DOMAIN
from ruvdllm_export.onnx_graph.norms import make_head_rms_norm
from ruvdllm_export.onnx_graph.rope import make_rope
from ruvdllm_export.spec import k_norm, q_norm

NEG = float(np.finfo(np.float32).min)  # masked score: exp underflows to exactly 0, stays finite


def make_past_inputs(ctx: BuildContext) -> None:
    s = ctx.spec
    for layer in range(s.num_layers):
        for name in (artifact.past_key(layer), artifact.past_value(layer)):
            ctx.g.input(name, FLOAT, [1, s.num_kv_heads, "past_sequence", s.head_dim])
        for name in (artifact.present_key(layer), artifact.present_value(layer)):
            ctx.g.output(name, FLOAT, [1, s.num_kv_heads, "total_sequence", s.head_dim])


def make_visibility_bias(ctx: BuildContext) -> None:
    """block_ids [1,S] → additive bias [1,1,S,P+S] (0 visible, NEG hidden).

        block_ids ─Cast f32─┬─Unsqueeze(1)─► keys [1,1,S]    ┐
                            └─Unsqueeze(2)─► queries [1,S,1] ┴─LessOrEqual─► [1,S,S] ─Where(0, NEG)─┐
        past_key.0 ─Shape[2]─► P ─ConstantOfShape(0)─► [1,S,P] ──────────────────────────────────Concat(-1)─Unsqueeze(1)─► bias
    Compared as float: block ids are small integers, and float compares run on every EP.
    Over a key/value buffer P is total_sequence_length − S (the buffer is longer than the past);
    a causal-only graph has no blocks and no bias.
    """
    if ctx.options.causal_only:
        return
    g, scope = ctx.g, "/model/attn_bias"
    ids = g.op("Cast", [ctx.block_ids], f"{scope}/Cast", to=FLOAT)
    keys = g.op("Unsqueeze", [ids, g.const([1])], f"{scope}/Unsqueeze_keys")
    queries = g.op("Unsqueeze", [ids, g.const([2])], f"{scope}/Unsqueeze_queries")
    visible = g.op("LessOrEqual", [keys, queries], f"{scope}/LessOrEqual")
    chunk = g.op("Where", [visible, g.const(0.0, np.float32), g.const(NEG, np.float32)], f"{scope}/Where")
    seq_len = g.op("Shape", [ctx.input_ids], f"{scope}/Shape_chunk", start=1, end=2)
    if ctx.options.kv_buffer:
        total = g.op("Cast", [ctx.kv_lengths[1]], f"{scope}/Cast_total", to=INT64)
        total = g.op("Reshape", [total, g.const([1])], f"{scope}/Reshape_total")
        past_len = g.op("Sub", [total, seq_len], f"{scope}/Sub_past")
    else:
        past_len = g.op("Shape", [artifact.past_key(0)], f"{scope}/Shape_past", start=2, end=3)
    past_shape = g.op("Concat", [g.const([1]), seq_len, past_len], f"{scope}/Concat_past_shape", axis=0)
    past = g.op(
        "ConstantOfShape",
        [past_shape],
        f"{scope}/ConstantOfShape_past",
        value=_scalar_tensor(0.0),
    )
    bias = g.op("Concat", [past, chunk], f"{scope}/Concat", axis=-1)
    ctx.attention_bias = g.op("Unsqueeze", [bias, g.const([1])], f"{scope}/Unsqueeze_heads")


QKV = ("q_proj", "k_proj", "v_proj")


def make_attention_block(ctx: BuildContext, layer: int, x: str) -> str:
    """x (normed) [1,S,d] → attention output after o_proj [1,S,d]; writes present_key/value.{layer}.

    x ─q_proj─(q_norm)─RoPE─► q ┐
    x ─k_proj─(k_norm)─RoPE─► k ┼─ attention core (past ++ chunk, visibility bias) ─o_proj─►
    x ─v_proj───────────────► v ┘
    q/k/v are one packed matmul when the options pack linears; "gqa" does the norms and RoPE itself
    and reads the packed output unsplit unless a bank adds a delta to one of them.
    """
    s, g = ctx.spec, ctx.g
    scope = f"/model/layers.{layer}/attn"
    fused = ctx.options.attention == "gqa"
    qkv = ctx.linears(layer, QKV, x, scope, "qkv_proj", split=not fused or s.qk_norm)
    if s.qk_norm:  # outside GroupQueryAttention too: its q/k norm inputs have no CPU kernel (1.32)
        q, k, v = qkv
        eps = s.rms_norm_eps
        q = make_head_rms_norm(
            g, f"{scope}/q_norm", q, ctx.weights[q_norm(layer)], eps, s.num_heads, s.head_dim
        )
        k = make_head_rms_norm(
            g, f"{scope}/k_norm", k, ctx.weights[k_norm(layer)], eps, s.num_kv_heads, s.head_dim
        )
        qkv = [q, k, v]
    if fused:
        out = make_gqa_core(ctx, layer, scope, qkv)
    else:
        q, k, v = qkv
        q = make_rope(g, f"{scope}/q_rope", q, ctx.position_ids, ctx.rope, s.num_heads)
        k = make_rope(g, f"{scope}/k_rope", k, ctx.position_ids, ctx.rope, s.num_kv_heads)
        core = {"mha": make_mha_core, "attention23": make_attention23_core, "matmul": make_matmul_core}
        out = core[ctx.options.attention](ctx, layer, scope, q, k, v)
    return ctx.linear(layer, "o_proj", out, scope)


def make_gqa_core(ctx: BuildContext, layer: int, scope: str, qkv: list[str]) -> str:
    """GroupQueryAttention over packed [1,S,(H+2kv)·D] or separate q/k/v, RoPE by position_ids
    inside, non-causal: the visibility bias decides.

        qkv ─┐
        past_key/value.{layer} ─ GroupQueryAttention(do_rotary, causal=0, attention_bias) ─► [1,S,H·D]
        seqlens_k, total_sequence_length ─┘                  └─► present_key/value.{layer}

    Over a key/value buffer (options.kv_buffer) seqlens_k / total_sequence_length are the graph's
    inputs, since the buffer's length is not the past's; causal-only rows (the AR graph) need no
    bias: GroupQueryAttention's own causal masking (its default).
    """
    s, g = ctx.spec, ctx.g
    query, key, value = (qkv[0], "", "") if len(qkv) == 1 else qkv
    seqlens_k, total = ctx.kv_lengths if ctx.options.kv_buffer else _gqa_lengths(ctx)
    cos, sin = ctx.rope
    inputs = [
        query,
        key,
        value,
        artifact.past_key(layer),
        artifact.past_value(layer),
        seqlens_k,
        total,
        cos,
        sin,
        ctx.position_ids,
    ]
    visibility = {} if ctx.options.causal_only else {"causal": 0}  # else the bias decides
    if not ctx.options.causal_only:
        inputs.append(ctx.attention_bias)
    y, _, _ = g.op(
        "GroupQueryAttention",
        inputs,
        f"{scope}/GroupQueryAttention",
        domain=MS_DOMAIN,
        outputs=[
            f"{scope}/GroupQueryAttention/output_0",
            artifact.present_key(layer),
            artifact.present_value(layer),
        ],
        num_heads=s.num_heads,
        kv_num_heads=s.num_kv_heads,
        do_rotary=1,
        rotary_interleaved=0,
        scale=1.0 / math.sqrt(s.head_dim),
        **visibility,
    )
    return y


def _gqa_lengths(ctx: BuildContext) -> tuple[str, str]:
    """GroupQueryAttention's seqlens_k [1] = P+S−1 and total_sequence_length (scalar) = P+S, int32,
    built once from the shapes of past_key.0 and input_ids."""
    key = "attention:gqa_lengths"
    if key not in ctx.g.shared:
        g, scope = ctx.g, "/model/gqa_lengths"
        past_len = g.op("Shape", [artifact.past_key(0)], f"{scope}/Shape_past", start=2, end=3)
        seq_len = g.op("Shape", [ctx.input_ids], f"{scope}/Shape_chunk", start=1, end=2)
        total = g.op("Add", [past_len, seq_len], f"{scope}/Add_total")
        total = g.op("Cast", [total], f"{scope}/Cast_total", to=INT32)
        seqlens_k = g.op("Sub", [total, g.const([1], np.int32)], f"{scope}/Sub_one")
        scalar = g.op("Squeeze", [total, g.const([0])], f"{scope}/Squeeze_total")
        ctx.g.shared[key] = (seqlens_k, scalar)
    return ctx.g.shared[key]


def make_present(ctx: BuildContext, layer: int, scope: str, k: str, v: str) -> tuple[str, str]:
    """k, v [1,S,kv·D] → present_key/value.{layer} = past ++ chunk, [1,kv,P+S,D] (BNSH).

        k ─Reshape[1,S,kv,D]─Transpose[0,2,1,3]─► [1,kv,S,D] ─┐
        past_key.{layer} [1,kv,P,D] ─────────────────────────Concat(axis 2)─► present_key.{layer}
    (the same for v)
    """
    g, s = ctx.g, ctx.spec
    presents = []
    for name, x, past, present in (
        ("key", k, artifact.past_key(layer), artifact.present_key(layer)),
        ("value", v, artifact.past_value(layer), artifact.present_value(layer)),
    ):
        x = g.op("Reshape", [x, g.const([0, 0, s.num_kv_heads, s.head_dim])], f"{scope}/{name}/Reshape")
        x = g.op("Transpose", [x], f"{scope}/{name}/Transpose", perm=[0, 2, 1, 3])
        presents.append(g.op("Concat", [past, x], f"{scope}/{name}/Concat_past", axis=2, outputs=[present]))
    return presents[0], presents[1]


def _expand_kv(ctx: BuildContext, scope: str, x: str) -> str:
    """[1,kv,T,D] → [1,heads,T,D]: KV head j serves query heads j·g .. j·g+g−1 (transformers' repeat_kv)."""
    g, s = ctx.g, ctx.spec
    if s.kv_groups == 1:
        return x
    x = g.op("Unsqueeze", [x, g.const([2])], f"{scope}/Unsqueeze")
    x = g.op("Expand", [x, g.const([1, 1, s.kv_groups, 1, 1])], f"{scope}/Expand")
    return g.op("Reshape", [x, g.const([0, s.num_heads, -1, s.head_dim])], f"{scope}/Reshape")


def make_mha_core(ctx: BuildContext, layer: int, scope: str, q: str, k: str, v: str) -> str:
    """q [1,S,H·D]; present K/V expanded to H heads ─MultiHeadAttention(attention_bias)─► [1,S,H·D]"""
    present_k, present_v = make_present(ctx, layer, scope, k, v)
    key = _expand_kv(ctx, f"{scope}/key_expand", present_k)
    value = _expand_kv(ctx, f"{scope}/value_expand", present_v)
    return ctx.g.op(
        "MultiHeadAttention",
        [q, key, value, "", "", ctx.attention_bias],
        f"{scope}/MultiHeadAttention",
        domain=MS_DOMAIN,
        num_heads=ctx.spec.num_heads,
        scale=1.0 / math.sqrt(ctx.spec.head_dim),
    )


def make_attention23_core(ctx: BuildContext, layer: int, scope: str, q: str, k: str, v: str) -> str:
    """ONNX Attention (opset 23): 3-D q/k/v with head counts, past in, present out, additive mask."""
    s = ctx.spec
    y, _, _ = ctx.g.op(
        "Attention",
        [q, k, v, ctx.attention_bias, artifact.past_key(layer), artifact.past_value(layer)],
        f"{scope}/Attention",
        outputs=[f"{scope}/Attention/output_0", artifact.present_key(layer), artifact.present_value(layer)],
        q_num_heads=s.num_heads,
        kv_num_heads=s.num_kv_heads,
        is_causal=0,
        scale=1.0 / math.sqrt(s.head_dim),
    )
    return y


def make_matmul_core(ctx: BuildContext, layer: int, scope: str, q: str, k: str, v: str) -> str:
    """Plain ops; the g query heads of each KV head are stacked as rows so K/V are never copied.

    q [1,S,H·D] ─Reshape[1,S,H,D]─Transpose─► [1,H,S,D] ─Reshape[1,kv,g·S,D]─Mul(1/√D)─┐
    present_key [1,kv,T,D] ─Transpose─► [1,kv,D,T] ─────────────────────────────────MatMul─► scores [1,kv,g·S,T]
    scores ─Add(bias tiled g times [1,1,g·S,T])─Softmax─MatMul(present_value)─► [1,kv,g·S,D]
           ─Reshape[1,H,S,D]─Transpose─Reshape─► [1,S,H·D]
    """
    g, s = ctx.g, ctx.spec
    present_k, present_v = make_present(ctx, layer, scope, k, v)
    q = g.op("Reshape", [q, g.const([0, 0, s.num_heads, s.head_dim])], f"{scope}/query/Reshape")
    q = g.op("Transpose", [q], f"{scope}/query/Transpose", perm=[0, 2, 1, 3])
    q = g.op("Reshape", [q, g.const([0, s.num_kv_heads, -1, s.head_dim])], f"{scope}/query/Reshape_groups")
    q = g.op("Mul", [q, g.const(1.0 / math.sqrt(s.head_dim), np.float32)], f"{scope}/query/Mul_scale")
    key_t = g.op("Transpose", [present_k], f"{scope}/key/Transpose_scores", perm=[0, 1, 3, 2])
    scores = g.op("MatMul", [q, key_t], f"{scope}/MatMul_scores")
    scores = g.op("Add", [scores, _grouped_bias(ctx)], f"{scope}/Add_bias")
    probs = g.op("Softmax", [scores], f"{scope}/Softmax", axis=-1)
    out = g.op("MatMul", [probs, present_v], f"{scope}/MatMul_values")
    out = g.op("Reshape", [out, g.const([0, s.num_heads, -1, s.head_dim])], f"{scope}/output/Reshape_heads")
    out = g.op("Transpose", [out], f"{scope}/output/Transpose", perm=[0, 2, 1, 3])
    return g.op("Reshape", [out, g.const([0, 0, s.num_heads * s.head_dim])], f"{scope}/output/Reshape")


def _grouped_bias(ctx: BuildContext) -> str:
    """The visibility bias repeated for the g stacked query heads: [1,1,g·S,T], built once."""
    key = "attention:grouped_bias"
    if key not in ctx.g.shared:
        groups = ctx.spec.kv_groups
        bias = ctx.attention_bias
        if groups > 1:
            bias = ctx.g.op("Tile", [bias, ctx.g.const([1, 1, groups, 1])], "/model/attn_bias/Tile_groups")
        ctx.g.shared[key] = bias
    return ctx.g.shared[key]


def _scalar_tensor(value: float):
    return helper.make_tensor("value", FLOAT, [1], [value])
