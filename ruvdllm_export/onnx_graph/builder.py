"""Build the diffusion model's ONNX graph from a ModelSpec and its weights (numpy / Q4Tensor).

The graph reads as the list of steps in BUILD_STEPS; each `make_*` step adds its nodes under its
namespace and leaves what later steps need on the BuildContext. Inputs and outputs follow
docs/artifact.md (names in runtime/artifact.py).

    input_ids ─embed─► h ─┬─ layer 0 … layer L-1 (RMSNorm, attention, RMSNorm, MLP; residual adds
                          │    fused into the norms) ─► rows output_offset.. ─final norm─┬─ LM head ─► top-k, logsumexp, entropy
    position_ids ─RoPE────┤                                                               └─ L2 norm ─► query
    block_ids ─bias───────┤  past_key/value.l ─► present_key/value.l
    adapter_weights, adapter.{t}.a/b ─► bank branch on each targeted linear
    adapter_gate ─► per-row switch of the static LoRA (conversion adapter), when one is baked in
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from runtime import artifact
from runtime.artifact import BANK_WIDTH, Features, bank_factor_shapes, static_lora_shapes
from ruvdllm_export.onnx_graph.attention import make_attention_block, make_past_inputs, make_visibility_bias
from ruvdllm_export.onnx_graph.context import BuildContext
from ruvdllm_export.onnx_graph.embedding import make_embedding, make_embedding_lora
from ruvdllm_export.onnx_graph.graph import FLOAT, INT32, INT64, ExternalData, GraphBuilder
from ruvdllm_export.onnx_graph.head import make_head_outputs, make_output_rows, make_query
from ruvdllm_export.onnx_graph.linear import (
    StaticLora,
    Weight,
    as_float,
    as_q4,
    make_linear,
    make_static_lora_delta,
)
from ruvdllm_export.onnx_graph.mlp import make_mlp_block
from ruvdllm_export.onnx_graph.norms import make_rms_norm, make_skip_rms_norm
from ruvdllm_export.onnx_graph.options import GraphOptions
from ruvdllm_export.onnx_graph.q8 import Q8Tensor, SplitQ8Tensor, quantize_q8, split_q8
from ruvdllm_export.onnx_graph.rope import make_rope_caches
from ruvdllm_export.onnx_graph.wasm_linear import WidenedBlocks, make_widened_gather
from ruvdllm_export.quant.q4 import Q4Tensor
from ruvdllm_export.spec import (
    EMBED,
    FINAL_NORM,
    LINEARS,
    LM_HEAD,
    ModelSpec,
    expected_shapes,
    input_norm,
    linear_weight,
    post_attention_norm,
    weight_shape,
)


def build_graph(
    spec: ModelSpec,
    weights: dict[str, Weight],
    options: GraphOptions | None = None,
    lora: dict[str, StaticLora] | None = None,
    external_data: Path | str | ExternalData | None = None,
) -> onnx.ModelProto:
    """The whole model as a ModelProto. With `external_data` (a file path, or an ExternalData
    over one) every initializer of 1 KiB or more is streamed into that file as it is built and
    the proto only points at it (save it beside the file, without save_as_external_data);
    otherwise all are held in memory."""
    options = options or GraphOptions()
    check_weights(spec, weights)
    check_lora(spec, lora or {})
    opset = 23 if options.attention == "attention23" else 21  # 21: what every EP's kernels are registered for
    external = external_data
    if external_data is not None and not isinstance(external_data, ExternalData):
        external = ExternalData(external_data)
    g = GraphBuilder("ruvdllm", opset, external)
    if options.quantization == "widened" and external is not None:
        # beside the data file, named after the graph (model.onnx.data -> model.onnx.widened.*)
        g.shared["widened_blocks"] = WidenedBlocks(external.path.with_suffix(""))
    ctx = BuildContext(
        g=g,
        spec=spec,
        weights=weights if _prepared_for(weights, options) else prepare_weights(spec, weights, options),
        options=options,
        lora=dict(lora or {}),
    )
    try:
        for step in BUILD_STEPS:
            step(ctx)
    finally:
        if external is not None:
            external.close()
        if "widened_blocks" in g.shared:
            g.shared["widened_blocks"].close()
    metadata = {
        "architecture": spec.architecture,
        "attention": options.attention,
        "quantization": options.quantization,
    }
    return ctx.g.to_model(doc=f"ruvdllm masked-diffusion {spec.architecture}", metadata=metadata)


def prepare_weights(spec: ModelSpec, weights: dict[str, Weight], options: GraphOptions) -> dict[str, Weight]:
    """What the graph will hold for each tensor: in q4 mode every linear as a Q4Tensor (exact ones
    kept, float ones quantized), the token table(s) at `table_bits`; in fp32 mode all float.
    Norm weights and biases stay float32."""
    tables = {EMBED} | ({LM_HEAD} if not spec.tie_word_embeddings else set())
    linears = {linear_weight(layer, p) for layer in range(spec.num_layers) for p in LINEARS}
    prepared: dict[str, Weight] = {}
    for name, weight in weights.items():
        if options.quantization == "fp32" or name not in tables | linears:
            prepared[name] = as_float(weight)
        elif name in linears:
            prepared[name] = as_q4(weight)
        else:
            split = options.quantization == "q4" and options.accuracy_level != 4
            prepared[name] = _as_table(weight, options.table_bits, split)
    return prepared


def _prepared_for(weights, options: GraphOptions) -> bool:
    """Were a mapping's forms prepared for graphs of `options` (onnx_graph/spill.py's
    SpilledWeights: read one tensor per access, never all at once)? Only the options that decide
    the forms count: the AR graph (ar_graph.py) reads the full graph's. False for plain weights."""
    prepared = getattr(weights, "prepared_for", None)
    return prepared is not None and all(
        getattr(prepared, f) == getattr(options, f) for f in ("quantization", "accuracy_level", "table_bits")
    )


def _as_table(weight: Weight, bits: int | None, split: bool) -> Q4Tensor | Q8Tensor | SplitQ8Tensor:
    """Exact 4-bit tables stay 4-bit; anything else goes to 8 bits unless 4 is asked for (the table
    feeds the head, the most quantization-sensitive matmul). 8-bit codes run as MatMulNBits bits=8
    with int8 activations (accuracy_level 4), and as two exact 4-bit halves (`split`) in float
    (level 0), where bits=8 has no fast kernel; the int8 linears read 8-bit codes directly."""
    if bits is None:
        bits = 4 if isinstance(weight, Q4Tensor) else 8
    if bits == 4:
        return as_q4(weight)
    if isinstance(weight, SplitQ8Tensor):
        return weight
    q8 = weight if isinstance(weight, Q8Tensor) else quantize_q8(as_float(weight))
    return split_q8(q8) if split else q8


def check_weights(spec: ModelSpec, weights: dict[str, Weight]) -> None:
    """Every tensor the graph reads is present with the shape the spec implies."""
    expected = expected_shapes(spec)
    for name, shape in expected.items():
        if name not in weights:
            raise ValueError(f"missing tensor {name}")
        got = weight_shape(weights, name)
        if got != shape:
            raise ValueError(f"tensor {name} has shape {got}, expected {shape}")


def check_lora(spec: ModelSpec, lora: dict[str, StaticLora]) -> None:
    """Static LoRA factors name a linear (or the head / embedding) and fit its shape."""
    features = {
        linear_weight(layer, proj): f
        for layer in range(spec.num_layers)
        for proj, f in spec.linear_features().items()
    }
    features[LM_HEAD] = Features(spec.hidden_size, spec.vocab_size)
    features[EMBED] = Features(spec.vocab_size, spec.hidden_size)  # a linear over one-hot ids (PEFT)
    for name, factors in lora.items():
        if name not in features:
            raise ValueError(f"LoRA factors for {name}: not a linear of this model")
        in_, out = features[name]
        if (factors.a.shape, factors.b.shape) != static_lora_shapes(features[name], factors.a.shape[0]):
            raise ValueError(
                f"LoRA factors for {name}: a {factors.a.shape} / b {factors.b.shape}, expected a [r, {in_}] / b [{out}, r]"
            )


# --- the build steps, in order ---------------------------------------------------------------
def make_inputs(ctx: BuildContext) -> None:
    g = ctx.g
    ctx.input_ids = g.input(artifact.INPUT_IDS, INT64, [1, "sequence"])
    ctx.position_ids = g.input(artifact.POSITION_IDS, INT64, [1, "sequence"])
    if not ctx.options.causal_only:
        ctx.block_ids = g.input(artifact.BLOCK_IDS, INT64, [1, "sequence"])
    if ctx.options.kv_buffer:  # where the rows end: the buffer's length is not the past's
        ctx.kv_lengths = (
            g.input(artifact.SEQLENS_K, INT32, [1]),
            g.input(artifact.TOTAL_SEQUENCE_LENGTH, INT32, []),
        )
    ctx.output_offset = g.input(artifact.OUTPUT_OFFSET, INT64, [1])
    make_past_inputs(ctx)


def make_adapter_gate(ctx: BuildContext) -> None:
    """adapter_gate [1,S] ─Unsqueeze(-1)─► [1,S,1], read by every static LoRA branch (only when a
    static LoRA is baked in and the switch is asked for)."""
    if not (ctx.lora and ctx.options.adapter_switch):
        return
    g = ctx.g
    gate = g.input(artifact.ADAPTER_GATE, FLOAT, [1, "sequence"])
    ctx.lora_gate = g.op("Unsqueeze", [gate, g.const([-1])], "/model/adapter_gate/Unsqueeze")


def make_adapter_inputs(ctx: BuildContext) -> None:
    """adapter_weights [1,S,K] and one A/B bank pair per target; the slot weights are repeated rank
    times once, for every bank branch, and cut to the width the factors are bound with:

        adapter_weights [1,S,K] ─Unsqueeze(-1)─Expand[1,1,1,r]─Reshape─► [1,S,K·r] ─Slice(0:W)─► [1,S,W]
        W = adapter.{t}.a's last dimension: K·r with a bank bound, 0 without one

    Binding zero-width factors when no adapter is loaded makes the bank branches empty matmuls: the
    factors (K·r columns per layer and target) are not read on every forward only to add zeros.
    """
    o, g = ctx.options, ctx.g
    if not o.has_adapters:
        return
    width = o.adapter_slots * o.adapter_rank
    weights = g.input(artifact.ADAPTER_WEIGHTS, FLOAT, [1, "sequence", o.adapter_slots])
    features = ctx.spec.linear_features()
    for target in o.adapter_targets:
        if target not in LINEARS:
            raise ValueError(f"adapter target {target!r} is not one of {LINEARS}")
        a_shape, b_shape = bank_factor_shapes(features[target], ctx.spec.num_layers, BANK_WIDTH)
        ctx.banks[target] = (
            g.input(artifact.adapter_a(target), FLOAT, list(a_shape)),
            g.input(artifact.adapter_b(target), FLOAT, list(b_shape)),
        )
    scope = "/model/adapter_weights"
    w = g.op("Unsqueeze", [weights, g.const([-1])], f"{scope}/Unsqueeze")
    w = g.op("Expand", [w, g.const([1, 1, 1, o.adapter_rank])], f"{scope}/Expand_rank")
    w = g.op("Reshape", [w, g.const([0, 0, width])], f"{scope}/Reshape")
    bound = g.op("Shape", [ctx.banks[o.adapter_targets[0]][0]], f"{scope}/Shape_bound", start=2, end=3)
    ctx.slot_weights = g.op("Slice", [w, g.const([0]), bound, g.const([2])], f"{scope}/Slice_bound")


def make_rope_tables(ctx: BuildContext) -> None:
    max_position = ctx.options.max_position or ctx.spec.max_position
    ctx.rope = make_rope_caches(ctx.g, ctx.spec, max_position)


def make_embedding_step(ctx: BuildContext) -> None:
    table = ctx.weights[EMBED]
    if (
        ctx.options.quantization == "widened"
        and ctx.spec.tie_word_embeddings
        and isinstance(table, Q4Tensor | Q8Tensor)
    ):
        # the head widens this table anyway: read its rows there, and ship its blocks once
        ctx.hidden = make_widened_gather(ctx.g, "/model/embed_tokens", EMBED, ctx.input_ids, table)
    else:
        ctx.hidden = make_embedding(ctx.g, EMBED, ctx.input_ids, table)
    if EMBED in ctx.lora:
        ctx.hidden = make_embedding_lora(
            ctx.g, ctx.input_ids, ctx.hidden, ctx.lora[EMBED], ctx.lora_gate or None
        )


def make_decoder_layers(ctx: BuildContext) -> None:
    """Pre-norm residual blocks; each residual add is fused into the norm that follows it.

        h ─RMSNorm─► n;  r = h
        per layer: a = attn(n);  n, r = SkipRMSNorm(a, r);  m = mlp(n);  n, r = SkipRMSNorm(m, r) (next layer's norm)
    The last layer's (m, r) are left for the output step, which keeps only the output rows first.
    """
    s, g, w = ctx.spec, ctx.g, ctx.weights
    eps = s.rms_norm_eps
    residual = ctx.hidden
    normed = make_rms_norm(g, "/model/layers.0/input_layernorm", residual, w[input_norm(0)], eps)
    for layer in range(s.num_layers):
        attn = make_attention_block(ctx, layer, normed)
        normed, residual = make_skip_rms_norm(
            g,
            f"/model/layers.{layer}/post_attention_layernorm",
            attn,
            residual,
            w[post_attention_norm(layer)],
            eps,
        )
        mlp = make_mlp_block(ctx, layer, normed)
        if layer + 1 < s.num_layers:
            normed, residual = make_skip_rms_norm(
                g,
                f"/model/layers.{layer + 1}/input_layernorm",
                mlp,
                residual,
                w[input_norm(layer + 1)],
                eps,
            )
    ctx.hidden, ctx.residual = mlp, residual


def make_outputs(ctx: BuildContext) -> None:
    """Rows output_offset.. only: final norm, LM head (top-k, logsumexp, entropy) and the query."""
    g, s = ctx.g, ctx.spec
    last = ctx.hidden
    rows = make_output_rows(g, last, ctx.output_offset, "/model/norm/mlp_out")
    residual_rows = make_output_rows(g, ctx.residual, ctx.output_offset, "/model/norm/residual")
    final, _ = make_skip_rms_norm(
        g, "/model/norm", rows, residual_rows, ctx.weights[FINAL_NORM], s.rms_norm_eps
    )
    logits = make_lm_head(ctx, final)
    make_head_outputs(g, logits, min(ctx.options.top_k, s.vocab_size))
    make_query(g, final, s.hidden_size)


def make_lm_head(ctx: BuildContext, x: str) -> str:
    """Tied heads read the embedding's table: in q4 mode its MatMulNBits initializers are the very
    ones the embedding Gather reads; in fp32 mode a Transpose of the embedding matrix (folded by
    onnxruntime at load, stored once on disk). A head LoRA is its own branch under lm_head's name
    (a tied head's table name is the embedding's, whose LoRA has that name already)."""
    s, g, scope = ctx.spec, ctx.g, "/model/lm_head"
    name = EMBED if s.tie_word_embeddings else LM_HEAD
    lora = ctx.lora.get(LM_HEAD)  # a head LoRA is keyed lm_head.weight, tied or not
    gate = None  # the head sees only the output rows: so does its gate
    if lora is not None and ctx.lora_gate:
        gate = make_output_rows(g, ctx.lora_gate, ctx.output_offset, f"{scope}/gate")
    if ctx.options.quantization == "fp32" and s.tie_word_embeddings:
        table_t = g.op("Transpose", [EMBED], f"{scope}/Transpose_tied", perm=[1, 0])
        logits = g.op("MatMul", [x, table_t], f"{scope}/MatMul")
    else:
        logits = make_linear(g, scope, name, x, ctx.weights[name], ctx.fmt)
    if lora is not None:
        delta = make_static_lora_delta(g, scope, LM_HEAD, x, lora, gate)
        logits = g.op("Add", [logits, delta], f"{scope}/Add_lora")
    return logits


BUILD_STEPS = (
    make_inputs,
    make_adapter_gate,
    make_adapter_inputs,
    make_rope_tables,
    make_visibility_bias,
    make_embedding_step,
    make_decoder_layers,
    make_outputs,
)


def graph_weights_as_float(prepared: dict[str, Weight]) -> dict[str, np.ndarray]:
    """The float values of what the graph holds (for references that must see the same numbers)."""
    return {name: as_float(w) for name, w in prepared.items()}
