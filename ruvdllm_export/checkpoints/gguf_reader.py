"""Read a GGUF file (llama.cpp's format) of a LLaMA / Qwen2 / Qwen3 model.

Each tensor goes through the handler its type is registered with in QTYPES:
    F32, F16, BF16, Q8_0     -> float32 (exact in float; the exporter quantizes later)
    Q4_0, Q4_1, Q4_K         -> Q4Tensor, bit-exact (quant/gguf_blocks.py); 1-D tensors -> float32
    any other type gguf reads (Q5_K, Q6_K, Q5_0, ...) -> float32 via gguf's dequantizer, marked lossy:
                                the exporter must re-quantize it to 4 bits
The embedding (token_embd) keeps its type too: a Q4Tensor embedding is exactly
`dequantize_q4(...)` as floats, and the same blocks serve a tied LM head.

llama.cpp's converter permutes LLaMA's q/k rows (its rope rotates adjacent pairs, Hugging Face's
rotates halves); we undo it. A row permutation moves whole rows, so it is exact on Q4 blocks.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import gguf
import numpy as np

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints import rope_config
from ruvdllm_export.checkpoints.architectures import Architecture, by_gguf_arch, check_weights
from ruvdllm_export.checkpoints.gguf_names import canonical_name, gguf_name
from ruvdllm_export.checkpoints.lazy import LazyWeights
from ruvdllm_export.quant.gguf_blocks import q4_0_to_q4, q4_1_to_q4, q4_k_to_q4
from ruvdllm_export.quant.q4 import Q4Tensor, take_rows
from ruvdllm_export.spec import ModelSpec

Q = gguf.GGMLQuantizationType
EXACT_Q4 = {Q.Q4_0: q4_0_to_q4, Q.Q4_1: q4_1_to_q4, Q.Q4_K: q4_k_to_q4}
FLOAT_TYPES = {Q.F32, Q.F16, Q.BF16, Q.Q8_0}  # float32 holds them exactly


def read_metadata(reader: gguf.GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _f32(value) -> float:
    """GGUF stores these as float32: take the shortest decimal that round-trips (1e-06, not 9.99e-07)."""
    return float(str(np.float32(value)))


def _get(meta: dict, key: str, where: str, default=None):
    value = meta.get(key, default)
    if value is None:
        raise RuvdllmError(f"{where}: missing metadata {key}")
    return value


def spec_from_metadata(
    meta: dict, arch: Architecture, vocab_rows: int, tied: bool, where: str, rope_tensors: dict | None = None
) -> ModelSpec:
    """`rope_tensors`: the file's rope factor tensors (rope_config.GGUF_ROPE_TENSORS) by name."""
    p = arch.gguf_arch
    hidden = int(_get(meta, f"{p}.embedding_length", where))
    heads = int(_get(meta, f"{p}.attention.head_count", where))
    kv_heads = meta.get(f"{p}.attention.head_count_kv", heads)
    if isinstance(kv_heads, list):
        raise RuvdllmError(f"{where}: per-layer KV head counts are not supported")
    head_dim = int(meta.get(f"{p}.attention.key_length", hidden // heads))
    context = int(_get(meta, f"{p}.context_length", where))
    scaling = rope_config.from_gguf(meta, p, rope_tensors or {}, head_dim, context, where)
    eos = meta.get("tokenizer.ggml.eos_token_id")
    eot = meta.get("tokenizer.ggml.eot_token_id")
    return ModelSpec(
        architecture=arch.name,
        vocab_size=int(meta.get(f"{p}.vocab_size", vocab_rows)),
        hidden_size=hidden,
        intermediate_size=int(_get(meta, f"{p}.feed_forward_length", where)),
        num_layers=int(_get(meta, f"{p}.block_count", where)),
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=head_dim,
        rms_norm_eps=_f32(_get(meta, f"{p}.attention.layer_norm_rms_epsilon", where)),
        rope_theta=_f32(meta.get(f"{p}.rope.freq_base", arch.default_rope_theta)),
        rope_scaling=scaling,
        max_position=context,
        tie_word_embeddings=tied,
        attention_bias=arch.attention_bias,
        qk_norm=arch.qk_norm,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(dict.fromkeys(i for i in (eos, eot) if i is not None)),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
    )


def convert_tensor(tensor) -> tuple[np.ndarray | Q4Tensor, str]:
    """One GGUF tensor -> (float32 array or Q4Tensor, exactness label)."""
    qtype = tensor.tensor_type
    data = tensor.data
    if qtype in EXACT_Q4 and data.ndim == 2:
        return EXACT_Q4[qtype](np.asarray(data)), exactness_label(qtype, data.ndim)
    values = np.array(gguf.quants.dequantize(data, qtype), dtype=np.float32)  # a copy: no view of the mmap
    return values, exactness_label(qtype, data.ndim)


def exactness_label(qtype, ndim: int) -> str:
    """How a tensor of this type is held (convert_tensor's label), known without reading it."""
    if qtype in EXACT_Q4 and ndim == 2:
        return f"exact q4 from {qtype.name}"
    if qtype == Q.F32:
        return "float"
    if qtype in FLOAT_TYPES or ndim == 1:
        return f"float from {qtype.name}"
    return f"lossy: {qtype.name} dequantized; will be requantized"


def _check_readable(tensor) -> None:
    """Dequantize one row now, so a type gguf cannot read fails at load, not mid-export."""
    if tensor.tensor_type not in EXACT_Q4 and tensor.tensor_type not in FLOAT_TYPES:
        gguf.quants.dequantize(tensor.data[:1], tensor.tensor_type)


def _read_tensor(tensor, where: str, permuted_heads: int | None):
    """The lazy reader of one tensor: convert it from the mapped file, undo the q/k permutation."""
    try:
        weight, _ = convert_tensor(tensor)
    except ValueError as exc:
        raise RuvdllmError(f"{where}: tensor {tensor.name} cannot be read ({exc})") from None
    if permuted_heads is None:
        return weight
    return _take_rows(weight, unpermute_rows(weight.shape[0], permuted_heads))


def unpermute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's LlamaModel.permute (which took HF rows in `order`)."""
    order = np.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(-1)
    return np.argsort(order)


def _take_rows(weight, rows):
    return take_rows(weight, rows) if isinstance(weight, Q4Tensor) else weight[rows]


def open_gguf(path: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # gguf raises ValueError/KeyError/IndexError/... on damaged headers and data
        raise RuvdllmError(
            f"{path}: not a readable GGUF file, truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from None


def read_gguf(path: Path):
    """-> (spec, weights (LazyWeights: each tensor converted from the mapped file on access),
    exactness, metadata, tensor type counts)."""
    where = str(path)
    reader = open_gguf(path)
    meta = read_metadata(reader)
    arch = by_gguf_arch(str(_get(meta, "general.architecture", where)), where)
    rope_tensors = {
        t.name: np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        for t in reader.tensors
        if t.name in rope_config.GGUF_ROPE_TENSORS
    }
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    rows = next((int(t.shape[-1]) for t in reader.tensors if t.name == "token_embd.weight"), 0)
    # the spec (rope scaling included) is checked before any weight is read: a 7B file fails fast
    spec_from_metadata(meta, arch, rows, tied, where, rope_tensors)
    shapes, exactness, found = {}, {}, {}
    for tensor in reader.tensors:
        if tensor.name in rope_tensors:
            continue
        name = canonical_name(tensor.name)
        if name is None:
            raise RuvdllmError(
                f"{where}: tensor {tensor.name!r} is not understood for architecture {arch.gguf_arch}"
            )
        try:
            _check_readable(tensor)
        except ValueError as exc:
            raise RuvdllmError(f"{where}: tensor {tensor.name} cannot be read ({exc})") from None
        found[name] = tensor
        shapes[name] = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims fastest first
        exactness[name] = exactness_label(tensor.tensor_type, len(tensor.shape))
    if "model.embed_tokens.weight" not in found:
        raise RuvdllmError(f"{where}: missing tensor token_embd.weight")
    spec = spec_from_metadata(meta, arch, shapes["model.embed_tokens.weight"][0], tied, where, rope_tensors)
    heads = {}  # q/k rows llama.cpp permuted, and over how many heads
    if arch.gguf_permuted_qk:
        for layer in range(spec.num_layers):
            heads[f"model.layers.{layer}.self_attn.q_proj.weight"] = spec.num_heads
            heads[f"model.layers.{layer}.self_attn.k_proj.weight"] = spec.num_kv_heads
    readers = {
        name: functools.partial(_read_tensor, tensor, where, heads.get(name))
        for name, tensor in found.items()
    }
    weights = LazyWeights(readers, shapes)
    check_weights(spec, weights, where, display=gguf_name)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return spec, weights, exactness, meta, dict(types)
