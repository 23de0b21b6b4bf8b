"""RoPE settings from a Hugging Face config.json or from GGUF metadata -> (rope_theta, RopeScaling).

Both read into ruvdllm_export/rope_scaling.py's `RopeScaling`; anything outside what that module
computes is a one-line RuvdllmError naming the file, raised before any tensor is read.

config.json (transformers' rules, modeling_rope_utils.py): `rope_scaling` (older files) wins over
`rope_parameters` (transformers >= 5); the type is `rope_type` or the older `type`; rope_theta sits
in that dict or at the top level; `original_max_position_embeddings` defaults to
max_position_embeddings, and a top-level one takes precedence (the Phi-3 convention).

GGUF (what llama.cpp's convert_hf_to_gguf.py writes for LLaMA / Qwen):
    {arch}.rope.scaling.type linear + .factor         -> linear
    {arch}.rope.scaling.type yarn + .factor, .original_context_length, .yarn_attn_factor,
                               .yarn_beta_fast, .yarn_beta_slow -> yarn
    {arch}.rope.scaling.type longrope + rope_factors_long/short tensors, .attn_factor -> longrope
    a rope_freqs.weight tensor (Llama 3.x: the converter's per-pair divisors) -> freq_factors
    transformers' "dynamic" has no GGUF form (the converter writes nothing for it).
"""

from __future__ import annotations

import math

import numpy as np

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.rope_scaling import RopeScaling

SUPPORTED = "default, linear, dynamic, yarn, llama3, longrope"
GGUF_ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def _need(params: dict, key: str, kind: str, where: str):
    if params.get(key) is None:
        raise RuvdllmError(f"{where}: rope scaling {kind!r} needs {key!r}")
    return params[key]


def _pairs(values, head_dim: int, name: str, where: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))
    if len(values) != head_dim // 2:
        raise RuvdllmError(
            f"{where}: {name} has {len(values)} entries, head_dim {head_dim} needs {head_dim // 2}"
        )
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise RuvdllmError(f"{where}: {name} holds a non-positive or non-finite factor")
    return values


def _check_factor(factor: float | None, kind: str, where: str) -> None:
    if factor is not None and not (math.isfinite(factor) and factor > 0):
        raise RuvdllmError(f"{where}: rope scaling {kind!r} factor {factor!r} must be a positive number")


def from_hf_config(
    config: dict, default_theta: float, head_dim: int, max_position: int, where: str
) -> tuple[float, RopeScaling | None]:
    params = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise RuvdllmError(f"{where}: rope_scaling / rope_parameters must be an object, not {params!r}")
    theta = float(params.get("rope_theta") or config.get("rope_theta") or default_theta)
    kind = params.get("rope_type") or params.get("type") or "default"
    partial = params.get("partial_rotary_factor", config.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise RuvdllmError(
            f"{where}: partial_rotary_factor {partial} is not supported (LLaMA / Qwen rotate the whole head)"
        )
    original = int(
        config.get("original_max_position_embeddings")
        or params.get("original_max_position_embeddings")
        or max_position
    )
    factor = params.get("factor")
    _check_factor(factor, kind, where)
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, RopeScaling("linear", factor=float(_need(params, "factor", kind, where)))
    if kind == "dynamic":  # transformers measures growth from max_position_embeddings itself
        return theta, RopeScaling(
            "dynamic", factor=float(_need(params, "factor", kind, where)), original_max_position=max_position
        )
    if kind == "yarn":
        return theta, RopeScaling(
            "yarn",
            factor=float(factor) if factor is not None else max_position / original,
            original_max_position=original,
            attention_factor=params.get("attention_factor"),
            beta_fast=params.get("beta_fast"),
            beta_slow=params.get("beta_slow"),
            mscale=params.get("mscale"),
            mscale_all_dim=params.get("mscale_all_dim"),
            truncate=bool(params.get("truncate", True)),
        )
    if kind == "llama3":
        return theta, RopeScaling(
            "llama3",
            factor=float(_need(params, "factor", kind, where)),
            low_freq_factor=float(_need(params, "low_freq_factor", kind, where)),
            high_freq_factor=float(_need(params, "high_freq_factor", kind, where)),
            original_max_position=original,
        )
    if kind == "longrope":
        return theta, RopeScaling(
            "longrope",
            factor=float(factor) if factor is not None else max_position / original,
            original_max_position=original,
            attention_factor=params.get("attention_factor"),
            short_factor=_pairs(_need(params, "short_factor", kind, where), head_dim, "short_factor", where),
            long_factor=_pairs(_need(params, "long_factor", kind, where), head_dim, "long_factor", where),
        )
    raise RuvdllmError(f"{where}: rope scaling {kind!r} is not supported (supported: {SUPPORTED})")


def from_gguf(
    meta: dict, prefix: str, tensors: dict[str, np.ndarray], head_dim: int, context: int, where: str
) -> RopeScaling | None:
    """`tensors`: the file's GGUF_ROPE_TENSORS that are present, as float arrays."""
    key = f"{prefix}.rope.scaling"
    kind = str(meta.get(f"{key}.type", "none"))
    factor = meta.get(f"{key}.factor")
    factor = None if factor is None else float(factor)
    _check_factor(factor, kind, where)
    rope_dims = meta.get(f"{prefix}.rope.dimension_count", head_dim)
    if int(rope_dims) != head_dim:
        raise RuvdllmError(f"{where}: rope over {rope_dims} of {head_dim} head dimensions is not supported")
    attn = meta.get(f"{key}.attn_factor")
    if attn is not None and float(attn) != 1.0 and kind != "longrope":
        raise RuvdllmError(f"{where}: {key}.attn_factor {attn} is not supported for rope scaling {kind!r}")
    if "rope_freqs.weight" in tensors:
        if kind not in ("none", "linear") or (factor or 1.0) != 1.0:
            raise RuvdllmError(
                f"{where}: rope_freqs.weight together with rope scaling {kind!r} is not supported"
            )
        factors = _pairs(tensors["rope_freqs.weight"], head_dim, "rope_freqs.weight", where)
        return RopeScaling("freq_factors", factors=factors)
    if kind in ("none", "linear"):  # llama.cpp applies .factor linearly unless the type says otherwise
        return None if (factor or 1.0) == 1.0 else RopeScaling("linear", factor=factor)
    original = int(meta.get(f"{key}.original_context_length") or context)
    if kind == "yarn":
        log_mul = meta.get(f"{key}.yarn_log_multiplier")
        ext = meta.get(f"{key}.yarn_ext_factor")
        if (log_mul not in (None, 0.0)) or (ext not in (None, 1.0)):
            raise RuvdllmError(f"{where}: yarn with yarn_log_multiplier / yarn_ext_factor is not supported")
        attention = meta.get(f"{key}.yarn_attn_factor")
        fast, slow = meta.get(f"{key}.yarn_beta_fast"), meta.get(f"{key}.yarn_beta_slow")
        return RopeScaling(
            "yarn",
            factor=factor if factor is not None else context / original,
            original_max_position=original,
            attention_factor=None if attention is None else float(attention),
            beta_fast=None if fast is None else float(fast),
            beta_slow=None if slow is None else float(slow),
        )
    if kind == "longrope":
        for name in ("rope_factors_long.weight", "rope_factors_short.weight"):
            if name not in tensors:
                raise RuvdllmError(f"{where}: rope scaling 'longrope' needs the tensor {name}")
        return RopeScaling(
            "longrope",
            factor=context / original,
            original_max_position=original,
            attention_factor=None if attn is None else float(attn),
            short_factor=_pairs(tensors["rope_factors_short.weight"], head_dim, "rope_factors_short", where),
            long_factor=_pairs(tensors["rope_factors_long.weight"], head_dim, "rope_factors_long", where),
        )
    raise RuvdllmError(
        f"{where}: rope scaling {kind!r} is not supported (supported: none, linear, yarn, longrope, rope_freqs)"
    )
