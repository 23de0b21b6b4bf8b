"""RoPE inverse frequencies and the cos/sin attention factor, for every scaling LLaMA / Qwen use.

One function, `rope_frequencies`, feeds both the ONNX graph's rotary tables (onnx_graph/rope.py)
and the torch reference (reference/functional.py), so the two rotate by the very same numbers.
It follows transformers' `modeling_rope_utils.py` (ROPE_INIT_FUNCTIONS) operation by operation in
float32 — the values agree with it to float32 rounding (tests/export/test_rope_scaling.py) — plus
llama.cpp's precomputed per-dimension factors (`rope_freqs.weight` in Llama 3 GGUFs).

    kind          inverse frequency of pair i (d = head_dim, θ = rope_theta)        attention factor
    default       θ^(-2i/d)                                                         1
    linear        θ^(-2i/d) / factor                                                1
    dynamic       θ'^(-2i/d), θ' = θ·(factor·L/L0 − (factor−1))^(d/(d−2)), L=max(L,L0)  1
    yarn          ramp between θ^(-2i/d) and θ^(-2i/d)/factor over the corrected dims  0.1·ln(factor)+1 (or given)
    llama3        θ^(-2i/d), /factor for long wavelengths, smoothed in between       1
    longrope      θ^(-2i/d) / short_factor[i] (L ≤ L0) or / long_factor[i] (L > L0)  √(1+ln f/ln L0) (or given)
    freq_factors  θ^(-2i/d) / factors[i] (llama.cpp's rope_freqs tensor)             1

Two kinds depend on the sequence length L at run time, and transformers recomputes them per forward
(dynamic from max(position_ids)+1, longrope by whether that exceeds L0). A graph holds static tables
for a context C, so `context` here is C: both kinds are computed for L = C. The consequence, which
`static_table_notice` states to the user:
  - C ≤ L0: transformers never rescales below L0, so the tables equal it at every length (exact).
  - C > L0: the tables equal transformers' for a forward whose longest position is C−1 (dynamic) or
    longer than L0 (longrope); shorter forwards in transformers use other frequencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("linear", "dynamic", "yarn", "llama3", "longrope", "freq_factors")
RUNTIME_DEPENDENT = ("dynamic", "longrope")


@dataclass(frozen=True)
class RopeScaling:
    """A scaling rule as read from config.json's rope_scaling / rope_parameters or GGUF metadata;
    fields a kind does not use stay None. Tuples, so the spec stays hashable and comparable."""

    kind: str  # one of KINDS
    factor: float | None = None
    original_max_position: int | None = None  # L0: yarn, llama3, longrope; dynamic's max_position_embeddings
    attention_factor: float | None = None  # yarn / longrope: None = the paper's default from factor
    beta_fast: float | None = None  # yarn: None = 32
    beta_slow: float | None = None  # yarn: None = 1
    mscale: float | None = None  # yarn (DeepSeek-style attention factor)
    mscale_all_dim: float | None = None
    truncate: bool = True  # yarn: floor/ceil the correction range
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    short_factor: tuple[float, ...] | None = None  # longrope, one per frequency pair
    long_factor: tuple[float, ...] | None = None
    factors: tuple[float, ...] | None = None  # freq_factors: divide each inverse frequency

    def to_dict(self) -> dict:
        """The fields that are set, for reports and the artifact's config."""
        out = {k: v for k, v in self.__dict__.items() if v is not None and k != "truncate"}
        if self.kind == "yarn" and not self.truncate:
            out["truncate"] = False
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _f32(x) -> np.float32:
    return np.float32(x)


def default_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """θ^(-2i/d) in float32, as transformers computes it (exponent in float32, float32 pow)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / _f32(head_dim)
    return (_f32(1.0) / (_f32(theta) ** exponent)).astype(np.float32)


def rope_frequencies(
    head_dim: int, theta: float, scaling: RopeScaling | None, context: int
) -> tuple[np.ndarray, float]:
    """-> (inverse frequencies float32 [head_dim / 2], attention factor that multiplies cos and sin).

    `context`: the sequence length the tables serve (the module docstring's C)."""
    if scaling is None:
        return default_inv_freq(head_dim, theta), 1.0
    return _KINDS[scaling.kind](head_dim, theta, scaling, context)


def _linear(d, theta, s, context):
    return (default_inv_freq(d, theta) / _f32(s.factor)).astype(np.float32), 1.0


def _dynamic(d, theta, s, context):
    seq_len = max(context, s.original_max_position)
    base = theta * ((s.factor * seq_len / s.original_max_position) - (s.factor - 1)) ** (d / (d - 2))
    return default_inv_freq(d, base), 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(d, theta, s, context):
    factor = s.factor
    attention = s.attention_factor
    if attention is None:
        if s.mscale and s.mscale_all_dim:
            attention = float(_yarn_mscale(factor, s.mscale) / _yarn_mscale(factor, s.mscale_all_dim))
        else:
            attention = _yarn_mscale(factor)
    beta_fast, beta_slow = s.beta_fast or 32, s.beta_slow or 1

    def correction_dim(rotations: float) -> float:  # the dim whose wavelength fits `rotations` in L0
        return (d * math.log(s.original_max_position / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    pos_freqs = _f32(theta) ** (np.arange(0, d, 2).astype(np.float32) / _f32(d))
    extrapolation = _f32(1.0) / pos_freqs
    interpolation = _f32(1.0) / (_f32(factor) * pos_freqs)
    ramp = np.clip((np.arange(d // 2, dtype=np.float32) - _f32(low)) / _f32(high - low), 0, 1)
    extrapolation_weight = (_f32(1) - ramp).astype(np.float32)
    inv_freq = interpolation * (_f32(1) - extrapolation_weight) + extrapolation * extrapolation_weight
    return inv_freq.astype(np.float32), attention


def _llama3(d, theta, s, context):
    inv_freq = default_inv_freq(d, theta)
    factor, low, high, old = s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position
    low_freq_wavelen, high_freq_wavelen = old / low, old / high
    wavelen = _f32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > _f32(low_freq_wavelen), inv_freq / _f32(factor), inv_freq).astype(np.float32)
    smooth = ((_f32(old) / wavelen - _f32(low)) / _f32(high - low)).astype(np.float32)
    smoothed = (_f32(1) - smooth) * scaled / _f32(factor) + smooth * scaled
    medium = ~(wavelen < _f32(high_freq_wavelen)) & ~(wavelen > _f32(low_freq_wavelen))
    return np.where(medium, smoothed, scaled).astype(np.float32), 1.0


def _longrope(d, theta, s, context):
    attention = s.attention_factor
    if attention is None:
        attention = (
            1.0 if s.factor <= 1.0 else math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_position))
        )
    ext = np.asarray(s.long_factor if context > s.original_max_position else s.short_factor, np.float32)
    shape = np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / _f32(d)
    return (_f32(1.0) / (ext * _f32(theta) ** shape)).astype(np.float32), attention


def _freq_factors(d, theta, s, context):
    return (default_inv_freq(d, theta) / np.asarray(s.factors, np.float32)).astype(np.float32), 1.0


_KINDS = {
    "linear": _linear,
    "dynamic": _dynamic,
    "yarn": _yarn,
    "llama3": _llama3,
    "longrope": _longrope,
    "freq_factors": _freq_factors,
}


def rope_tables(
    head_dim: int, theta: float, scaling: RopeScaling | None, context: int
) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [context, head_dim / 2] float32 for positions 0..context-1, times the attention
    factor — transformers' `emb.cos() * attention_scaling`, the same float32 steps."""
    inv_freq, attention = rope_frequencies(head_dim, theta, scaling, context)
    freqs = np.outer(np.arange(context, dtype=np.float32), inv_freq).astype(np.float32)
    cos, sin = np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)
    if attention != 1.0:
        cos, sin = (cos * _f32(attention)).astype(np.float32), (sin * _f32(attention)).astype(np.float32)
    return cos, sin


def static_table_notice(scaling: RopeScaling | None, context: int) -> str | None:
    """A one-line notice when tables for `context` cannot equal transformers at every length."""
    if scaling is None or scaling.kind not in RUNTIME_DEPENDENT or context <= scaling.original_max_position:
        return None
    l0 = scaling.original_max_position
    if scaling.kind == "dynamic":
        holds = f"a forward whose longest position is {context - 1}"
    else:
        holds = f"forwards longer than {l0} positions"
    return (
        f"rope scaling {scaling.kind!r}: transformers rescales by sequence length at run time; the graph's "
        f"tables for {context} positions equal it for {holds} (tables for at most {l0} positions equal it "
        "at every length)"
    )
