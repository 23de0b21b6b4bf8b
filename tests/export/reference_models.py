"""Tiny random LLaMA / Qwen2 / Qwen3 models built with transformers, with their ModelSpec and
canonical weights dict, for the torch reference model's tests."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ruvdllm_export.reference import weights_from_state_dict
from ruvdllm_export.spec import ModelSpec

ARCHITECTURES = ("llama", "qwen2", "qwen3")
_CLASSES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}
# hidden a multiple of 32 (4-bit blocks), GQA 4 query / 2 kv heads, vocab >= top-k
SIZES = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
)


def tiny_checkpoint(architecture: str, tied: bool = False, seed: int = 0):
    """(transformers model in eval mode, ModelSpec, weights dict) with random weights large
    enough that every op moves the logits (transformers' own init is ~0.02 and near-silent)."""
    config_class, model_class = _CLASSES[architecture]
    config = config_class(**SIZES, tie_word_embeddings=tied, rope_theta=10000.0, attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_class(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            elif "embed" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)
    spec = ModelSpec(
        architecture=architecture,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        head_dim=SIZES["head_dim"],
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=10000.0,
        max_position=config.max_position_embeddings,
        tie_word_embeddings=tied,
        attention_bias=architecture == "qwen2",
        qk_norm=architecture == "qwen3",
    )
    return model, spec, weights_from_state_dict(model.state_dict())
