"""GGUF tensor names <-> canonical (Hugging Face LLaMA) names: one table, read both ways.

llama.cpp uses the same names for LLaMA, Qwen2 and Qwen3 (gguf-py's constants.py, MODEL_TENSOR);
a tensor an architecture does not have (biases, q/k norms) is rejected later by the shape check.
"""

from __future__ import annotations

import re

from ruvdllm_export.spec import (
    EMBED,
    FINAL_NORM,
    LM_HEAD,
    input_norm,
    k_norm,
    linear_bias,
    linear_weight,
    post_attention_norm,
    q_norm,
)

L = "{layer}"

# GGUF name template -> canonical name template
TENSOR_NAMES: tuple[tuple[str, str], ...] = (
    ("token_embd.weight", EMBED),
    ("output_norm.weight", FINAL_NORM),
    ("output.weight", LM_HEAD),
    (f"blk.{L}.attn_norm.weight", input_norm(L)),
    (f"blk.{L}.ffn_norm.weight", post_attention_norm(L)),
    (f"blk.{L}.attn_q.weight", linear_weight(L, "q_proj")),
    (f"blk.{L}.attn_k.weight", linear_weight(L, "k_proj")),
    (f"blk.{L}.attn_v.weight", linear_weight(L, "v_proj")),
    (f"blk.{L}.attn_output.weight", linear_weight(L, "o_proj")),
    (f"blk.{L}.attn_q.bias", linear_bias(L, "q_proj")),
    (f"blk.{L}.attn_k.bias", linear_bias(L, "k_proj")),
    (f"blk.{L}.attn_v.bias", linear_bias(L, "v_proj")),
    (f"blk.{L}.attn_q_norm.weight", q_norm(L)),
    (f"blk.{L}.attn_k_norm.weight", k_norm(L)),
    (f"blk.{L}.ffn_gate.weight", linear_weight(L, "gate_proj")),
    (f"blk.{L}.ffn_up.weight", linear_weight(L, "up_proj")),
    (f"blk.{L}.ffn_down.weight", linear_weight(L, "down_proj")),
)


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape(L), r"(?P<layer>\d+)") + "$")


_TO_CANONICAL = [(_pattern(g), c) for g, c in TENSOR_NAMES]
_TO_GGUF = [(_pattern(c), g) for g, c in TENSOR_NAMES]


def _translate(name: str, table) -> str | None:
    for pattern, template in table:
        match = pattern.match(name)
        if match:
            return template.replace(L, match.groupdict().get("layer") or "")
    return None


def canonical_name(gguf_name: str) -> str | None:
    return _translate(gguf_name, _TO_CANONICAL)


def gguf_name(canonical: str) -> str:
    return _translate(canonical, _TO_GGUF) or canonical
