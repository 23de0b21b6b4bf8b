"""How much memory a conversion run needs, estimated from the spec before any weight is read: a
batch that does not fit should be a one-line error, not an out-of-memory kill twenty minutes in.

    total = runtime (interpreter + torch + tokenizers)
          + base (4-bit linears packed; the token table packed, widened to float32 for the
                  embedding and for the head, plus one dequantized linear per forward)
          + LoRA (factors, their gradients and AdamW's two moments: 4 float32 copies)
          + activations (what backward keeps per micro-batch; see activation_bytes)
          + heap (what malloc keeps of freed tensors, HEAP_SLACK of the three above)

With the lean allocator (allocator.py) the heap term goes: `lean_total` is the bound then.
"""

from __future__ import annotations

from dataclasses import dataclass

from ruvdllm_export.spec import ModelSpec

DEFAULT_BUDGET_GB = 24.0  # the CPU machine this was sized on; on CUDA the device's memory is used
FLOAT = 4
RUNTIME_BYTES = 400 * 2**20  # python + torch + tokenizers + onnx imported, measured at ~350 MiB
Q4_BYTES_PER_WEIGHT = 0.5 + 4 / 32 + 0.5 / 32  # nibbles, a float32 scale and a 4-bit zero point per 32
TABLE_PACKED_BYTES = 1 + 2 * (4 + 0.5) / 32  # the 8-bit table as two 4-bit halves (onnx_graph/q8.py)
LORA_COPIES = 4  # the factor, its gradient, AdamW's exp_avg and exp_avg_sq (all float32)
EMBED_TARGET, HEAD_TARGET = "embed_tokens", "lm_head"
# Freed memory glibc's heap keeps (allocator.py): the measured peaks stood up to 2% above the sum
# of the other parts on the 1B-shaped checkpoint (4,087-4,237 MiB against 4,157) and well under it
# on SmolLM2 (2,294-2,316 MiB against 2,765), so 5% of those parts covers both; with the lean
# allocator the 1B peak fell to 0.86 of the sum, and no slack is counted
HEAP_SLACK = 0.05


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per part of one training process (docs/conversion.md, "Memory")."""

    runtime: int
    base: int
    lora: int
    activations: int

    @property
    def heap(self) -> int:
        return int(HEAP_SLACK * (self.base + self.lora + self.activations))

    @property
    def lean_total(self) -> int:
        """The bound with the lean allocator, which keeps no freed memory back."""
        return self.runtime + self.base + self.lora + self.activations

    @property
    def total(self) -> int:
        return self.lean_total + self.heap

    def describe(self) -> str:
        gb = 2**30
        return (
            f"memory estimate {self.total / gb:.2f} GB = runtime {self.runtime / gb:.2f}"
            f" + base {self.base / gb:.2f} + LoRA and AdamW {self.lora / gb:.2f}"
            f" + activations {self.activations / gb:.2f} + heap {self.heap / gb:.2f}"
        )


def head_copies(certainty: bool) -> int:
    """[target rows, vocab] float32 tensors alive at once in the loss (objectives.py): at the end
    of the forward the logits, their log-softmax (kept for backward) and the certainty measure's
    probabilities and p·log p (measured on every step, trained on or not) — four; when certainty
    forcing is trained, autograd keeps the probabilities too and the backward adds the gradients
    of p·log p, p and log p beside them — six. (Three, the logits, softmax and one gradient, left
    the 1B conversion's measured peak above its estimate.)"""
    return 6 if certainty else 4


def activation_bytes(
    spec: ModelSpec,
    batch: int,
    positions: int,
    targets: int,
    checkpointing: bool,
    cached_base: bool = False,
    certainty: bool = False,
) -> int:
    """An upper estimate of what backward keeps per micro-batch: per layer and position about
    ten hidden-sized tensors (norms, q/k/v/o, residuals), four intermediate-sized ones (gate, up,
    silu, product) and one attention-probability row per head (the math kernel stores them);
    with gradient checkpointing only the layer inputs plus one layer. The head adds
    `head_copies` vocabulary-wide rows per target row.

    Each 4-bit linear is dequantized for its forward and autograd keeps that float32 weight for
    the backward (the input needs a gradient: LoRA branches upstream). One layer's worth is in
    base_bytes (all a checkpointed run keeps: its recomputed layer); without checkpointing every
    other layer's is kept too, unless the base is cached (`cached_base`: the kept weights are
    the cache, counted in the base)."""
    per_position = 10 * spec.hidden_size + 4 * spec.intermediate_size + spec.num_heads * positions
    per_layer = batch * positions * per_position * FLOAT
    layers = (
        (spec.num_layers * batch * positions * spec.hidden_size * FLOAT + per_layer)
        if checkpointing
        else (spec.num_layers * per_layer)
    )
    if not checkpointing and not cached_base:
        layer_weights = sum(f.in_features * f.out_features for f in spec.linear_features().values())
        layers += (spec.num_layers - 1) * layer_weights * FLOAT
    head = head_copies(certainty) * batch * targets * spec.vocab_size * FLOAT
    return layers + head


def base_bytes(spec: ModelSpec, cached_dtype_bytes: int = 0) -> int:
    """The frozen base: packed 4-bit linears (with the float32 copy of their scales the modules
    keep) and token table, the table widened to float32 twice (the embedding's and the head's:
    the graph's split 8-bit table runs as float32 in the reference), one layer's linears
    dequantized (what its forward, and backward's recompute of it, hold). `cached_dtype_bytes`
    (2 for --precision bf16) adds the dequantized copy of every linear
    and of the head the trainer then keeps."""
    linear = sum(f.in_features * f.out_features for f in spec.linear_features().values())
    table = spec.vocab_size * spec.hidden_size * (1 if spec.tie_word_embeddings else 2)
    # + the float32 copy of each block scale the 4-bit FrozenLinears keep as torch buffers
    packed = spec.num_layers * linear * (Q4_BYTES_PER_WEIGHT + 4 / 32) + table * TABLE_PACKED_BYTES
    widened = 2 * spec.vocab_size * spec.hidden_size * FLOAT + linear * FLOAT
    cached = cached_dtype_bytes * (spec.num_layers * linear + spec.vocab_size * spec.hidden_size)
    return int(packed + widened + cached)


def lora_bytes(spec: ModelSpec, rank: int, targets: tuple[str, ...]) -> int:
    """LoRA factors A [r, in] and B [out, r] per targeted linear and layer, times LORA_COPIES."""
    features = spec.linear_features()
    params = 0
    for target in targets:
        if target in features:
            f = features[target]
            params += spec.num_layers * rank * (f.in_features + f.out_features)
        elif target in (EMBED_TARGET, HEAD_TARGET):
            params += rank * (spec.vocab_size + spec.hidden_size)
    return params * FLOAT * LORA_COPIES


def estimate_memory(
    spec: ModelSpec,
    *,
    batch: int,
    positions: int,
    targets: int,
    checkpointing: bool,
    rank: int,
    lora_targets: tuple[str, ...],
    precision: str = "fp32",
    certainty: bool = False,
) -> MemoryEstimate:
    """The whole process for one micro-batch of `batch` rows of `positions` tokens (the objective's
    copies included) with `targets` supervised rows per batch row; `certainty`: certainty forcing
    trained (its weight > 0)."""
    return MemoryEstimate(
        runtime=RUNTIME_BYTES,
        base=base_bytes(spec, 2 if precision == "bf16" else 0),
        lora=lora_bytes(spec, rank, lora_targets),
        activations=activation_bytes(
            spec, batch, positions, targets, checkpointing, precision == "bf16", certainty
        ),
    )
