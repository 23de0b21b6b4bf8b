"""What the graph builder can be asked for, and the per-target defaults."""

from __future__ import annotations

from dataclasses import dataclass, replace

ATTENTION_FORMULATIONS = ("mha", "attention23", "matmul")
QUANTIZATIONS = ("q4", "fp32")
TARGETS = ("cpu", "cuda", "webgpu")

# Per execution provider: the attention formulation and MatMulNBits accuracy level.
# cpu: opset-23 Attention (onnxruntime >= 1.23): all three pass parity; alone it was the fastest
#   in 5 of 6 shapes (0.88-1.04x the MatMul form, MultiHeadAttention up to 1.18x, benchmarks/README.md),
#   and it needs no copy of the KV heads. Accuracy level 0: level 4's int8 activations are 2.4-3.5x
#   faster at L <= 64 but agree with the float reference on only ~95% of top-1 tokens (SmolLM2).
# webgpu: MultiHeadAttention was wrong for sequence >= 16 on Dawn and opset-23 Attention had no kernel
#   (DESIGN.md), so plain MatMul + Softmax until the browser proves otherwise; accuracy_level is
#   ignored there, 0 states that honestly.
# cuda: MultiHeadAttention, the fused op with mature CUDA kernels (opset-23 Attention had none before
#   onnxruntime 1.25); not validated here (no GPU), recorded as such in config.json.
TARGET_DEFAULTS = {
    "cpu": {"attention": "attention23", "accuracy_level": 0},
    "cuda": {"attention": "mha", "accuracy_level": 0},
    "webgpu": {"attention": "matmul", "accuracy_level": 0},
}


@dataclass(frozen=True)
class GraphOptions:
    quantization: str = "q4"  # every linear MatMulNBits 4-bit; "fp32" only for tests and size baselines
    attention: str = "attention23"  # the cpu default (see TARGET_DEFAULTS)
    accuracy_level: int = 0  # float activations; int8 (4) is 2.3x faster at L=8 but 94.9% top-1 agreement
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

    def __post_init__(self):
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, not {self.quantization!r}")
        if self.attention not in ATTENTION_FORMULATIONS:
            raise ValueError(f"attention must be one of {ATTENTION_FORMULATIONS}, not {self.attention!r}")
        if self.table_bits not in (None, 4, 8):
            raise ValueError(f"table_bits must be 4 or 8, not {self.table_bits!r}")
        if self.top_k < 1 or self.adapter_slots < 0 or self.adapter_rank < 1:
            raise ValueError("top_k and adapter_rank must be >= 1 and adapter_slots >= 0")

    @property
    def has_adapters(self) -> bool:
        return self.adapter_slots > 0 and bool(self.adapter_targets)


def options_for_target(target: str, **overrides) -> GraphOptions:
    """The defaults for one execution provider, with explicit overrides (None means "default")."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    return replace(GraphOptions(), **{**TARGET_DEFAULTS[target], **chosen})
