"""Pure tensor math of a LLaMA-family block, written to match Hugging Face's modeling code and
the ONNX graph number for number: RMSNorm, rotary embeddings (rotate_half), grouped-query
attention under a visibility matrix, and 4-bit MatMulNBits dequantization."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ruvdllm_export.onnx_graph.q8 import ZERO_POINT as Q8_ZERO_POINT
from ruvdllm_export.quant.q4 import BLOCK


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x²) + eps) * weight, computed in float32 as Hugging Face does."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rope_tables(
    position_ids: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, S, head_dim] for absolute positions; the frequency pairs are (i, i + d/2),
    the rotate_half convention of Hugging Face checkpoints. `inv_freq` [head_dim / 2] and the
    factor on cos/sin come from ruvdllm_export/rope_scaling.py (the graph's tables use the same)."""
    freqs = position_ids[..., None].float() * inv_freq.to(position_ids.device, torch.float32)  # [B, S, D/2]
    angles = torch.cat([freqs, freqs], dim=-1)  # [B, S, D]
    cos, sin = angles.cos(), angles.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, S, D] rotated by position: x·cos + rotate_half(x)·sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d, masked) v with grouped-query heads.

    q [B, H, S, D]; k, v [B, KV, T, D] (T = past + chunk); visible bool [B, S, T].
    Query head h reads kv head h // (H / KV), Hugging Face's repeat_kv order.
    """
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None])


def unpack_q4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, n_blocks, 16] -> uint8 [N, n_blocks, 32]: even k in the low nibble, odd k in
    the high nibble (the MatMulNBits packing)."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], BLOCK)


def dequantize_q4(
    packed: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor,
    mins: torch.Tensor | None,
    in_features: int,
) -> torch.Tensor:
    """W [N, K] = scales * (q - zero_points) + mins, per block of 32 along K; the same float32
    operations in the same order as the numpy reference, so the two agree bit for bit."""
    q = unpack_q4(packed).float()  # [N, n_blocks, 32]
    w = scales[..., None] * (q - zero_points[..., None].float())
    if mins is not None:
        w = w + mins[..., None]
    return w.reshape(w.shape[0], -1)[:, :in_features]


def dequantize_q8(packed: torch.Tensor, scales: torch.Tensor, in_features: int) -> torch.Tensor:
    """The graph's 8-bit token table: W [N, K] = scales * (packed - 128) per block of 32, the
    numpy reference's operations (ruvdllm_export/onnx_graph/q8.py)."""
    # in place: the same float ops in the same order, without two more table-sized temporaries
    # (a 128k-row table is 1 GB in float32)
    w = packed.float().sub_(float(Q8_ZERO_POINT)).mul_(scales[..., None])
    return w.reshape(w.shape[0], -1)[:, :in_features]
