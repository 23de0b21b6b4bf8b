"""The torch diffusion model: a LLaMA-family decoder (LLaMA, Qwen2, Qwen3) built from a
`ModelSpec` and a weights dict under canonical names, computing exactly what the exported ONNX
graph computes (docs/artifact.md). It is the reference the graph is validated against and the
network the conversion adapter is trained in.

One forward over a chunk of S tokens, optionally after P cached tokens:

    input_ids ─ embed ─┬─ [RMSNorm ─ attention(block_ids, past) ─ +] ─ [RMSNorm ─ SwiGLU ─ +] ─ ×L
                       └──────────────────────────────────────────────────────────────────────┘
    ─ RMSNorm ─ hidden ─ head ─ logits ─ (rows output_offset..S-1) ─ top-k, logsumexp, entropy
                   └──── L2-normalise ─ query

Row i of the output predicts token i + 1 (the shift: the AR head is reused as it was trained).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.utils.checkpoint
from torch import nn

from runtime import artifact
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.reference.functional import apply_rope, attention, rms_norm, rope_tables
from ruvdllm_export.reference.linear import BankCall, FrozenEmbedding, FrozenLinear
from ruvdllm_export.reference.masks import visibility
from ruvdllm_export.reference.outputs import graph_outputs
from ruvdllm_export.rope_scaling import rope_frequencies
from ruvdllm_export.spec import (
    EMBED,
    FINAL_NORM,
    LINEARS,
    LM_HEAD,
    ModelSpec,
    expected_shapes,
    input_norm,
    k_norm,
    linear_bias,
    linear_weight,
    post_attention_norm,
    q_norm,
    weight_shape,
)

Past = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (key after RoPE, value), [B, KV, P, D]
# target linear name -> (a [layers, in, slots·rank], b [layers, slots·rank, out]), LoRA scale folded
# in: the bank layout of runtime/artifact.py (or a and b as lists of one tensor per layer)
AdapterBank = dict[str, tuple[torch.Tensor | list[torch.Tensor], torch.Tensor | list[torch.Tensor]]]


def _norm_buffer(module: nn.Module, name: str, weights: dict, key: str) -> None:
    module.register_buffer(
        name, torch.from_numpy(np.asarray(weights[key], dtype=np.float32)), persistent=False
    )


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, weights: dict, layer: int):
        super().__init__()
        self.spec = spec
        self.layer = layer
        self.proj = nn.ModuleDict(
            {
                proj: FrozenLinear(weights[linear_weight(layer, proj)], weights.get(linear_bias(layer, proj)))
                for proj in LINEARS
            }
        )
        _norm_buffer(self, "input_norm", weights, input_norm(layer))
        _norm_buffer(self, "post_attention_norm", weights, post_attention_norm(layer))
        if spec.qk_norm:
            _norm_buffer(self, "q_norm", weights, q_norm(layer))
            _norm_buffer(self, "k_norm", weights, k_norm(layer))

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        visible: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        banks: dict[str, BankCall],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        spec = self.spec
        batch, seq_len, _ = x.shape  # batch, chunk length, hidden
        eps = spec.rms_norm_eps

        h = rms_norm(x, self.input_norm, eps)
        q = self.proj["q_proj"](h, banks.get("q_proj")).view(batch, seq_len, spec.num_heads, spec.head_dim)
        k = self.proj["k_proj"](h, banks.get("k_proj")).view(batch, seq_len, spec.num_kv_heads, spec.head_dim)
        v = self.proj["v_proj"](h, banks.get("v_proj")).view(batch, seq_len, spec.num_kv_heads, spec.head_dim)
        if spec.qk_norm:  # Qwen3: per-head RMSNorm before RoPE
            q = rms_norm(q, self.q_norm, eps)
            k = rms_norm(k, self.k_norm, eps)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, S, D]
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        attended = attention(q, k, v, visible).transpose(1, 2).reshape(batch, seq_len, -1)
        x = x + self.proj["o_proj"](attended, banks.get("o_proj"))

        h = rms_norm(x, self.post_attention_norm, eps)
        gate = self.proj["gate_proj"](h, banks.get("gate_proj"))
        up = self.proj["up_proj"](h, banks.get("up_proj"))
        x = x + self.proj["down_proj"](nn.functional.silu(gate) * up, banks.get("down_proj"))
        return x, (k, v)


class DiffusionLM(nn.Module):
    """A masked-diffusion LM over a frozen (float32 or 4-bit) LLaMA-family base.

    Args:
        spec: architecture hyper-parameters.
        weights: canonical name -> float32 array or Q4Tensor (ruvdllm_export/spec.py), or what
            the graph builder's prepare_weights holds (8-bit tables, ...); a linear given 4- or
            8-bit runs on those packed bits, a float one in float32 (the validation mode).
        mask_token_id: the token id that stands for [MASK].
        top_k: candidates per position in the graph outputs.
    """

    def __init__(self, spec: ModelSpec, weights: dict, mask_token_id: int, top_k: int = 32):
        super().__init__()
        _check_weights(spec, weights)
        if not 0 <= mask_token_id < spec.vocab_size:
            raise RuvdllmError(f"mask token id {mask_token_id}: outside the vocabulary of {spec.vocab_size}")
        self.spec = spec
        self.mask_token_id = mask_token_id
        self.top_k = top_k
        # Recompute each layer in backward instead of storing its activations: training memory
        # then grows with one layer, not all of them (set by the trainer; off for inference).
        self.gradient_checkpointing = False
        self.embed = FrozenEmbedding(weights[EMBED])
        self.layers = nn.ModuleList(DecoderLayer(spec, weights, layer) for layer in range(spec.num_layers))
        _norm_buffer(self, "final_norm", weights, FINAL_NORM)
        tied = spec.tie_word_embeddings or LM_HEAD not in weights
        self.head = FrozenLinear(weights[EMBED if tied else LM_HEAD])
        self.set_rope_context(spec.max_position)

    def set_rope_context(self, context: int) -> DiffusionLM:
        """Compute the rotary frequencies for `context` positions, the graph's table length (only
        'dynamic' and 'longrope' scaling depend on it; see ruvdllm_export/rope_scaling.py)."""
        inv_freq, self.rope_attention_factor = rope_frequencies(
            self.spec.head_dim, self.spec.rope_theta, self.spec.rope_scaling, context
        )
        self.register_buffer("rope_inv_freq", torch.from_numpy(inv_freq), persistent=False)
        return self

    @classmethod
    def from_checkpoint(cls, checkpoint, top_k: int = 32) -> DiffusionLM:
        """From a `LoadedCheckpoint` (ruvdllm_export.checkpoints.load_checkpoint): exact 4-bit
        tensors run 4-bit, float ones float32, with the loader's mask token."""
        return cls(checkpoint.spec, checkpoint.weights, checkpoint.mask_token_id, top_k)

    def cache_dequantized(self, enabled: bool = True, dtype: torch.dtype = torch.float32) -> DiffusionLM:
        """Trade memory for speed: keep every 4/8-bit linear's dequantized weight (in float32 the
        numbers do not change). Off by default, which keeps QLoRA's memory footprint; worth it for
        sampling and short-sequence work on CPU. `dtype=torch.bfloat16` keeps every linear in
        bfloat16 for training under autocast (about 4x the float32 matmul speed on CPUs with
        AVX512-BF16, and the tensor cores on a GPU)."""
        for module in self.modules():
            if isinstance(module, FrozenLinear):
                module.cache_dequantized(enabled, dtype)
        return self

    @property
    def quantized(self) -> bool:
        return self.layers[0].proj["q_proj"].quantized

    def backbone(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        block_ids: torch.Tensor | None = None,
        past: Past | None = None,
        adapter_weights: torch.Tensor | None = None,
        adapter_bank: AdapterBank | None = None,
        visible: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Past]:
        """Final-normed hidden states [B, S, hidden] and each layer's present (past + chunk)
        keys/values. Visibility comes from `block_ids` (the graph's rule) unless an explicit
        bool `visible` [B or 1, S, P + S] is given (training patterns block ids cannot express)."""
        past_len = 0 if not past else past[0][0].shape[2]
        if visible is None:
            if block_ids is None:
                raise ValueError("backbone needs block_ids or an explicit visibility matrix")
            visible = visibility(block_ids.to(input_ids.device), past_len)
        visible = visible.expand(input_ids.shape[0], -1, -1)
        rope = rope_tables(position_ids, self.rope_inv_freq, self.rope_attention_factor)
        layer_banks = _bank_calls(adapter_weights, adapter_bank, self.spec.num_layers)

        x = self.embed(input_ids)
        presents: Past = []
        for index, layer in enumerate(self.layers):
            args = (x, rope, visible, past[index] if past else None, layer_banks[index])
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x, present = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
            else:
                x, present = layer(*args)
            presents.append(present)
        return rms_norm(x, self.final_norm, self.spec.rms_norm_eps), presents

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        block_ids: torch.Tensor,
        output_offset: int = 0,
        past: Past | None = None,
        adapter_weights: torch.Tensor | None = None,
        adapter_bank: AdapterBank | None = None,
    ) -> dict[str, torch.Tensor]:
        """The graph's outputs under their graph names (runtime/artifact.py), plus `logits`
        [B, S, vocab] and `hidden` [B, S, hidden] over every row, for training and tests."""
        hidden, presents = self.backbone(
            input_ids, position_ids, block_ids, past, adapter_weights, adapter_bank
        )
        logits = self.head(hidden)
        outputs = graph_outputs(logits, hidden, output_offset, self.top_k)
        for layer, (key, value) in enumerate(presents):
            outputs[artifact.present_key(layer)] = key
            outputs[artifact.present_value(layer)] = value
        outputs["logits"] = logits
        outputs["hidden"] = hidden
        return outputs


def _bank_calls(
    adapter_weights: torch.Tensor | None, adapter_bank: AdapterBank | None, num_layers: int
) -> list[dict[str, BankCall]]:
    """Per layer, target -> (a[l], b[l], w) with w the slot weights repeated `rank` times, so
    slot k's delta B_k A_k x is scaled by adapter_weights[..., k] (docs/artifact.md)."""
    if adapter_bank is None or adapter_weights is None:
        return [{} for _ in range(num_layers)]
    slots = adapter_weights.shape[-1]
    calls: list[dict[str, BankCall]] = [{} for _ in range(num_layers)]
    for target, (a, b) in adapter_bank.items():
        if target not in LINEARS:
            raise ValueError(f"adapter bank target {target!r}: not one of {', '.join(LINEARS)}")
        # a and b may also be per-layer sequences of [in, slots·rank] / [slots·rank, out]: then only
        # the layers whose factors require grad are recorded by autograd (loop B's trainer trains
        # the last layers, and backpropagation stops there)
        a_shape = (len(a), *a[0].shape) if isinstance(a, list | tuple) else tuple(a.shape)
        b_shape = (len(b), *b[0].shape) if isinstance(b, list | tuple) else tuple(b.shape)
        if (
            a_shape[0] != num_layers
            or b_shape[0] != num_layers
            or a_shape[2] != b_shape[1]
            or a_shape[2] % slots
        ):
            raise ValueError(
                f"adapter bank {target}: a {a_shape} / b {b_shape} do not fit "
                f"{num_layers} layers and {slots} slots"
            )
        w = adapter_weights.repeat_interleave(a_shape[2] // slots, dim=-1)  # [B, S, slots·rank]
        for layer in range(num_layers):
            calls[layer][target] = (a[layer], b[layer], w)
    return calls


def _check_weights(spec: ModelSpec, weights: dict) -> None:
    required = [EMBED, FINAL_NORM]
    if not spec.tie_word_embeddings and LM_HEAD in weights:
        required.append(LM_HEAD)
    for layer in range(spec.num_layers):
        required += [linear_weight(layer, proj) for proj in LINEARS]
        required += [input_norm(layer), post_attention_norm(layer)]
        if spec.qk_norm:
            required += [q_norm(layer), k_norm(layer)]
    missing = [name for name in required if name not in weights]
    if missing:
        raise RuvdllmError(
            f"model weights: missing {missing[0]}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    shapes = expected_shapes(spec)
    for name in (
        linear_weight(0, "q_proj"),
        linear_weight(0, "k_proj"),
        linear_weight(0, "gate_proj"),
        EMBED,
    ):
        got, shape = weight_shape(weights, name), shapes[name]
        if got != shape:
            raise RuvdllmError(f"model weights: {name} has shape {got}, the spec needs {shape}")


def weights_from_state_dict(state_dict: dict) -> dict:
    """A torch state dict (e.g. a transformers LLaMA/Qwen model's, whose names already are the
    canonical ones) as a weights dict of float32 numpy arrays; non-tensors pass through."""
    return {
        name: value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else value
        for name, value in state_dict.items()
    }
