"""How much memory one micro-batch needs, checked before training starts: a batch that does not
fit should be a one-line error, not an out-of-memory kill twenty minutes in."""

from __future__ import annotations

from ruvdllm_export.spec import ModelSpec

DEFAULT_BUDGET_GB = 24.0  # the CPU machine this was sized on; on CUDA the device's memory is used
FLOAT = 4


def activation_bytes(spec: ModelSpec, batch: int, positions: int, targets: int, checkpointing: bool) -> int:
    """An upper estimate of what backward keeps per micro-batch: per layer and position about
    ten hidden-sized tensors (norms, q/k/v/o, residuals), four intermediate-sized ones (gate, up,
    silu, product) and one attention-probability row per head (the math kernel stores them);
    with gradient checkpointing only the layer inputs plus one layer. The head adds logits,
    softmax and their gradient for every target row."""
    per_position = 10 * spec.hidden_size + 4 * spec.intermediate_size + spec.num_heads * positions
    per_layer = batch * positions * per_position * FLOAT
    layers = (
        (spec.num_layers * batch * positions * spec.hidden_size * FLOAT + per_layer)
        if checkpointing
        else (spec.num_layers * per_layer)
    )
    head = 3 * batch * targets * spec.vocab_size * FLOAT
    return layers + head


def base_bytes(spec: ModelSpec) -> int:
    """The frozen base: 4-bit linears, a float embedding table (kept dequantized) and one
    dequantized layer's weights at a time."""
    linear = sum(f.in_features * f.out_features for f in spec.linear_features().values())
    return spec.num_layers * linear // 2 + 2 * spec.vocab_size * spec.hidden_size * FLOAT + linear * FLOAT
