"""What the graph builder can be asked for, and the per-target defaults."""

from __future__ import annotations

from dataclasses import dataclass, replace

ATTENTION_FORMULATIONS = ("gqa", "mha", "attention23", "matmul")
QUANTIZATIONS = ("q4", "widened", "int8", "fp32")
TARGETS = ("cpu", "cuda", "webgpu", "wasm")

# Per execution provider: the attention formulation and MatMulNBits accuracy level.
# cpu: GroupQueryAttention over a key/value buffer the runtime owns (kv_buffer, below): with the
#   past concatenated into a new present each forward, opset-23 Attention was the fastest
#   (0.88-0.90x GroupQueryAttention's time at 128 and 512 cached positions, MultiHeadAttention up
#   to 1.18x), but over the buffer nothing is copied, which beats it from the shortest contexts
#   on (benchmarks/README.md, "The full graph over a key/value buffer").
#   Accuracy level 4: int8 activations, ~2x faster per forward, and on the same text its top-1
#   agreement with the float reference equals llama.cpp's own on the same GGUF (96.8% vs 96.7%;
#   greedy text as close to the float model's, benchmarks/accuracy_bench.py).
# webgpu: MultiHeadAttention was wrong for sequence >= 16 on Dawn and opset-23 Attention had no kernel
#   (DESIGN.md), so plain MatMul + Softmax until the browser proves otherwise; accuracy_level is
#   ignored there, 0 states that honestly.
# wasm: the browser's WebAssembly build, where MatMulNBits is ~17x slower than native: the same 4-bit
#   blocks on disk, widened to float32 by the runtime before the session is created
#   (onnx_graph/wasm_linear.py, runtime/widening.py, web/js/widen.js; 6-10x faster per linear
#   there, benchmarks/browser_ops.py), exact. Attention as on webgpu, the formulation the browser
#   has proven.
# cuda: MultiHeadAttention, the fused op with mature CUDA kernels (opset-23 Attention had none before
#   onnxruntime 1.25); CUDA's MatMulNBits ignores the accuracy level. Not validated here (no GPU),
#   recorded as such in config.json.
TARGET_DEFAULTS = {
    "cpu": {"attention": "gqa", "kv_buffer": True, "accuracy_level": 4},
    "cuda": {"attention": "mha", "accuracy_level": 0},
    "webgpu": {"attention": "matmul", "accuracy_level": 0},
    "wasm": {"attention": "matmul", "accuracy_level": 0, "quantization": "widened"},
}


@dataclass(frozen=True)
class GraphOptions:
    quantization: str = "q4"  # MatMulNBits 4-bit; "widened"/"int8": wasm (wasm_linear.py); "fp32": tests
    attention: str = "attention23"  # the fastest that copies the cache (see TARGET_DEFAULTS)
    accuracy_level: int = 0  # float activations (exact); targets choose theirs (TARGET_DEFAULTS: cpu 4)
    pack_linears: bool = True  # q/k/v and gate/up as one MatMulNBits each (fewer, larger kernels)
    top_k: int = 32  # candidates per position: enough for top-k/top-p sampling at the usual k <= 20..40
    adapter_targets: tuple[str, ...] = ("q_proj", "v_proj")  # the LoRA targets TALoRA/DGR banks train
    adapter_slots: int = 8  # K slots composed per position (TALoRA groups + DGR retrievals); 0 = no banks
    adapter_rank: int = 4  # bank rank per slot; MicroLoRAs are rank 2, so 4 leaves room
    table_bits: int | None = None  # token table bits; None: 4 if exact Q4 else 8 (Q8_0 exactly)
    max_position: int | None = None  # RoPE table length; None = the checkpoint's max_position
    # A static LoRA (the conversion adapter) gets a per-row gate input, adapter_gate: rows with gate 0
    # are the base AR model, which the verified sampler needs. One Mul on [1, S, rank] per branch:
    # measured within noise of the ungated graph (benchmarks/README.md), so on by default.
    adapter_switch: bool = True
    # GroupQueryAttention over a key/value buffer the runtime owns: it reads the past from the
    # buffer's first P positions (seqlens_k / total_sequence_length inputs) and writes the chunk's
    # keys and values after them in place (past and present bound to one buffer), so no forward
    # copies the cache. Needs attention "gqa".
    kv_buffer: bool = False
    # Causal rows only, no block visibility (no block_ids input): the AR graph (ar_graph.py) alone,
    # never a diffusion model's graph. Needs kv_buffer.
    causal_only: bool = False

    def __post_init__(self):
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {self.quantization!r}")
        if self.attention not in ATTENTION_FORMULATIONS:
            raise ValueError(f"attention must be one of {ATTENTION_FORMULATIONS}, not {self.attention!r}")
        if self.kv_buffer and self.attention != "gqa":
            raise ValueError(f"a key/value buffer needs attention 'gqa', not {self.attention!r}")
        if self.causal_only and not self.kv_buffer:
            raise ValueError("causal_only needs kv_buffer")
        if self.table_bits not in (None, 4, 8):
            raise ValueError(f"table_bits must be 4 or 8, not {self.table_bits!r}")
        if self.top_k < 1 or self.adapter_slots < 0 or self.adapter_rank < 1:
            raise ValueError("top_k and adapter_rank must be >= 1 and adapter_slots >= 0")

    @property
    def has_adapters(self) -> bool:
        return self.adapter_slots > 0 and bool(self.adapter_targets)


# The oldest onnxruntime whose kernels run each attention formulation as the graph uses it:
# GroupQueryAttention's `causal` attribute (non-causal attention) arrived in 1.31, opset-23
# Attention in 1.23; everything else the builder emits (IR 10, MatMulNBits with a bias input,
# SkipSimplifiedLayerNormalization, RotaryEmbedding, MultiHeadAttention) loads on 1.20.
REQUIRED_ONNXRUNTIME = {"gqa": "1.31", "attention23": "1.23", "mha": "1.20", "matmul": "1.20"}


def required_onnxruntime(options: GraphOptions) -> str:
    return REQUIRED_ONNXRUNTIME[options.attention]


def options_for_target(target: str, **overrides) -> GraphOptions:
    """The defaults for one execution provider, with explicit overrides (None means "default")."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    defaults = dict(TARGET_DEFAULTS[target])
    if chosen.get("attention", "gqa") != "gqa":  # another attention asked for: it copies the cache
        defaults["kv_buffer"] = False
    return replace(GraphOptions(), **{**defaults, **chosen})
