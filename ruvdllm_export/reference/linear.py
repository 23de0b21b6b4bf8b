"""The model's linears and embedding: a frozen base (float32, or 4-bit in the MatMulNBits layout)
plus the two kinds of low-rank delta the design needs.

    y = W x + b                                   frozen base (buffers, never parameters)
      + s · B (A x)                               static LoRA: trainable, one per linear
      + B_bank (w ⊙ (A_bank x))                   adapter bank: per position and per step

The base lives in buffers so that `model.parameters()` is exactly the trainable LoRA: an
optimizer or DDP built from it cannot touch the base.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ruvdllm_export.onnx_graph.q8 import Q8Tensor
from ruvdllm_export.quant.q4 import Q4Tensor
from ruvdllm_export.reference.functional import dequantize_q4, dequantize_q8

# What a weights dict may hold for a linear: float32, the 4-bit MatMulNBits layout, or the graph
# builder's 8-bit token table (embedding / tied head).
Weight = np.ndarray | Q4Tensor | Q8Tensor

# A bank for one linear at one layer: a [in, slots·rank], b [slots·rank, out] (LoRA scale
# folded in) and w [B, S, slots·rank], the per-position slot weights repeated `rank` times.
BankCall = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _native(weight) -> Weight:
    """Any other form the graph builder stores a tensor in (e.g. an 8-bit table split into 4-bit
    halves) becomes the float32 values it stands for, by the builder's own dequantizer."""
    if isinstance(weight, np.ndarray | Q4Tensor | Q8Tensor):
        return weight
    from ruvdllm_export.onnx_graph.linear import as_float

    return as_float(weight)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


class LoraDelta(nn.Module):
    """s · B (A x) with A [rank, in], B [out, rank], s = alpha / rank (PEFT's layout, the static
    layout of runtime/artifact.py, and PEFT's init: A Kaiming-uniform, B zero, so a fresh adapter
    leaves the model unchanged)."""

    def __init__(
        self, in_features: int, out_features: int, rank: int, alpha: float, generator: torch.Generator
    ):
        super().__init__()
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def delta(self) -> torch.Tensor:
        """The merged update s · B A, [out, in]."""
        return self.scaling * self.lora_B @ self.lora_A


class FrozenLinear(nn.Module):
    """A linear whose base weight is float32 [out, in], or a Q4Tensor / Q8Tensor kept packed
    exactly as MatMulNBits stores it and dequantized on the fly (QLoRA: gradients reach x, never W)."""

    def __init__(self, weight: Weight, bias: np.ndarray | None = None):
        super().__init__()
        weight = _native(weight)
        self.quantized = isinstance(weight, Q4Tensor | Q8Tensor)
        self.bits = 4 if isinstance(weight, Q4Tensor) else 8 if isinstance(weight, Q8Tensor) else 32
        if self.bits == 8:
            self.out_features, self.in_features = weight.shape
            self.register_buffer("packed", _tensor(weight.packed), persistent=False)
            self.register_buffer("scales", _tensor(weight.scales.astype(np.float32)), persistent=False)
        elif self.quantized:
            self.out_features, self.in_features = weight.shape
            self.register_buffer("packed", _tensor(weight.packed), persistent=False)
            self.register_buffer("scales", _tensor(weight.scales.astype(np.float32)), persistent=False)
            self.register_buffer("zero_points", _tensor(weight.zero_points), persistent=False)
            mins = None if weight.mins is None else _tensor(weight.mins.astype(np.float32))
            self.register_buffer("mins", mins, persistent=False)
        else:
            self.out_features, self.in_features = weight.shape
            self.register_buffer("weight", _tensor(np.asarray(weight, dtype=np.float32)), persistent=False)
        bias_tensor = None if bias is None else _tensor(np.asarray(bias, dtype=np.float32))
        self.register_buffer("bias", bias_tensor, persistent=False)
        self.register_buffer("dequantized", None, persistent=False)  # see cache_dequantized
        self.lora: LoraDelta | None = None

    def cache_dequantized(self, enabled: bool, dtype: torch.dtype = torch.float32) -> None:
        """Keep the dequantized weight (4x the packed memory, no per-forward unpacking: on CPU
        unpacking costs about as much as the matmul at a few hundred tokens) or drop it. A float
        base is cached too when `dtype` is not float32. bfloat16 is for training under autocast:
        each weight is then within 2^-9 of the exact 4-bit value, not equal to it."""
        self.dequantized = None
        if enabled and (self.quantized or dtype != torch.float32):
            self.dequantized = self.base_weight().to(dtype)

    def base_weight(self) -> torch.Tensor:
        """The base weight as float [out, in] (dequantized when 4-bit)."""
        if self.dequantized is not None:
            return self.dequantized
        if not self.quantized:
            return self.weight
        if self.bits == 8:
            return dequantize_q8(self.packed, self.scales, self.in_features)
        return dequantize_q4(self.packed, self.scales, self.zero_points, self.mins, self.in_features)

    def forward(self, x: torch.Tensor, bank: BankCall | None = None) -> torch.Tensor:
        y = F.linear(x, self.base_weight(), self.bias)
        if self.lora is not None:
            y = y + self.lora(x)
        if bank is not None:
            a, b, w = bank
            y = y + ((x @ a) * w) @ b
        return y

    def merge_lora(self) -> None:
        """Fold the attached LoRA into the (cached) base weight and detach it: W + s·B·A in the
        cache's dtype, the adapted model as a new frozen base for the next adapter."""
        if self.lora is None:
            return
        with torch.no_grad():
            base = self.base_weight()
            self.dequantized = (base.float() + self.lora.delta().float()).to(base.dtype)
        self.lora = None

    def add_lora(self, rank: int, alpha: float, generator: torch.Generator) -> LoraDelta:
        self.lora = LoraDelta(self.in_features, self.out_features, rank, alpha, generator).to(self._device())
        return self.lora

    def _device(self) -> torch.device:
        return (self.packed if self.quantized else self.weight).device


class EmbeddingLoraDelta(nn.Module):
    """s · (A[:, id])ᵀ Bᵀ for token embeddings: A [rank, vocab], B [hidden, rank]. PEFT's
    embedding init (A zero, B normal) so a fresh adapter is again the identity."""

    def __init__(self, vocab: int, hidden: int, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.zeros(rank, vocab))
        self.lora_B = nn.Parameter(torch.empty(hidden, rank))
        nn.init.normal_(self.lora_B, generator=generator)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.lora_A.T) @ self.lora_B.T * self.scaling

    def delta(self) -> torch.Tensor:
        """The merged update of the embedding table, [vocab, hidden]."""
        return self.scaling * (self.lora_B @ self.lora_A).T


class FrozenEmbedding(nn.Module):
    """Token embedding table, float32 [vocab, hidden]; a 4- or 8-bit table is dequantized once
    (a lookup of dequantized rows is exactly what the graph's gather produces)."""

    def __init__(self, table: Weight):
        super().__init__()
        table = _native(table)
        if isinstance(table, Q8Tensor):
            weight = dequantize_q8(
                _tensor(table.packed), _tensor(table.scales.astype(np.float32)), table.in_features
            )
        elif isinstance(table, Q4Tensor):
            weight = dequantize_q4(
                _tensor(table.packed),
                _tensor(table.scales.astype(np.float32)),
                _tensor(table.zero_points),
                None if table.mins is None else _tensor(table.mins.astype(np.float32)),
                table.in_features,
            )
        else:
            weight = _tensor(np.asarray(table, dtype=np.float32))
        self.register_buffer("weight", weight, persistent=False)
        self.lora: EmbeddingLoraDelta | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = F.embedding(ids, self.weight)
        if self.lora is not None:
            x = x + self.lora(ids)
        return x

    def add_lora(self, rank: int, alpha: float, generator: torch.Generator) -> EmbeddingLoraDelta:
        vocab, hidden = self.weight.shape
        self.lora = EmbeddingLoraDelta(vocab, hidden, rank, alpha, generator).to(self.weight.device)
        return self.lora
