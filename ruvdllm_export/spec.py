"""The in-memory model every reader produces and every builder consumes.

Readers (Hugging Face safetensors, GGUF) turn a checkpoint into a `ModelSpec` plus a dict of
weights under *canonical names* (Hugging Face LLaMA naming, below). Each weight is either a
float32 numpy array or a `Q4Tensor` (ruvdllm_export/quant/q4.py) when the source was already
4-bit and maps exactly. The ONNX graph builder and the torch reference model both read this
form, so they see the very same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.artifact import Features, linear_features
from ruvdllm_export.rope_scaling import RopeScaling

# Canonical weight names. Linear weights are [out_features, in_features] (torch convention; the
# shape convention every part shares is in runtime/artifact.py).
EMBED = "model.embed_tokens.weight"  # [vocab, hidden]
FINAL_NORM = "model.norm.weight"  # [hidden]
LM_HEAD = "lm_head.weight"  # [vocab, hidden]; absent when tied to EMBED

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")


def weight_shape(weights, name: str) -> tuple[int, ...]:
    """A tensor's shape, without reading it when `weights` is lazy (it then carries `shapes`)."""
    shapes = getattr(weights, "shapes", None)
    return shapes[name] if shapes is not None else tuple(weights[name].shape)


def layer_prefix(layer: int) -> str:
    return f"model.layers.{layer}"


def linear_weight(layer: int, proj: str) -> str:
    group = "self_attn" if proj in ATTN_LINEARS else "mlp"
    return f"{layer_prefix(layer)}.{group}.{proj}.weight"


def linear_bias(layer: int, proj: str) -> str:
    """Qwen2 has q/k/v biases; LLaMA and Qwen3 have none."""
    group = "self_attn" if proj in ATTN_LINEARS else "mlp"
    return f"{layer_prefix(layer)}.{group}.{proj}.bias"


def input_norm(layer: int) -> str:
    return f"{layer_prefix(layer)}.input_layernorm.weight"


def post_attention_norm(layer: int) -> str:
    return f"{layer_prefix(layer)}.post_attention_layernorm.weight"


def q_norm(layer: int) -> str:
    """Qwen3's per-head RMSNorm on queries (and k_norm on keys), weight [head_dim]."""
    return f"{layer_prefix(layer)}.self_attn.q_norm.weight"


def k_norm(layer: int) -> str:
    return f"{layer_prefix(layer)}.self_attn.k_norm.weight"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture hyper-parameters of a LLaMA-family decoder, whatever file it came from."""

    architecture: str  # registered name: "llama", "qwen2", "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position: int
    tie_word_embeddings: bool
    attention_bias: bool = False  # q/k/v biases (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    chat_template: str | None = None
    rope_scaling: RopeScaling | None = None  # None: plain RoPE (ruvdllm_export/rope_scaling.py)

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def linear_features(self) -> dict[str, Features]:
        """(in_features, out_features) of every projection of a layer, by name (LINEARS)."""
        return linear_features(
            self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate_size
        )


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor a model of this spec has, with its shape (linear weights [out, in])."""
    h = spec.hidden_size
    weight_shapes = {proj: (f.out_features, f.in_features) for proj, f in spec.linear_features().items()}
    shapes: dict[str, tuple[int, ...]] = {EMBED: (spec.vocab_size, h), FINAL_NORM: (h,)}
    if not spec.tie_word_embeddings:
        shapes[LM_HEAD] = (spec.vocab_size, h)
    for layer in range(spec.num_layers):
        shapes[input_norm(layer)] = (h,)
        shapes[post_attention_norm(layer)] = (h,)
        for proj, shape in weight_shapes.items():
            shapes[linear_weight(layer, proj)] = shape
        if spec.attention_bias:
            for proj in ("q_proj", "k_proj", "v_proj"):
                shapes[linear_bias(layer, proj)] = (weight_shapes[proj][0],)
        if spec.qk_norm:
            shapes[q_norm(layer)] = (spec.head_dim,)
            shapes[k_norm(layer)] = (spec.head_dim,)
    return shapes
