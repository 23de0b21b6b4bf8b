"""The exported model directory: its config, its manifest and the names of the graph's inputs
and outputs. Standard library only: the same file is read by CPython, Pyodide and the hub.

Layout of an artifact directory (see docs/artifact.md for the full contract):

    model.onnx            (+ model.onnx.data when weights are external)
    config.json           ArtifactConfig below
    tokenizer.json        Hugging Face tokenizers format
    manifest.json         {"files": {name: {"sha256": ..., "bytes": ...}}, "format": 1}
    banks/                TALoRA / DGR adapter banks (runtime issue)
    answers.ngrams        optional: the answer store, drafts from the model's own answers
                          (runtime/answer_store.py), read by the verified sampler
    <file>.gz             gzip copies for HTTP delivery (browser exports); not in the manifest
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

from ruvdllm.errors import RuvdllmError

ARTIFACT_FORMAT = 1
CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
GRAPH_NAME = "model.onnx"
# The AR model's own graph beside a switchable model's: no conversion adapter, no adapter bank, its
# weights in GRAPH_NAME's data file (config `ar_graph`; ruvdllm_export/onnx_graph/ar_graph.py)
AR_GRAPH_NAME = "model_ar.onnx"
ANSWER_STORE_NAME = "answers.ngrams"
GZIP_SUFFIX = ".gz"  # `name.gz` beside `name`: the same bytes gzipped, for servers to send as they are
GZIP_LEVEL = 6  # zlib's default: the 4-bit weights shrink ~20% at level 6, ~18% at level 1
GZIP_MIN_SAVING = 0.10  # a copy that saves less is not worth its disk space


# --- graph input / output names (the contract between export and every runtime) -------------
INPUT_IDS = "input_ids"  # int64 [1, S]
POSITION_IDS = "position_ids"  # int64 [1, S]  absolute positions (RoPE)
BLOCK_IDS = "block_ids"  # int64 [1, S]  chunk key j is visible to query i iff block_ids[j] <= block_ids[i]
OUTPUT_OFFSET = "output_offset"  # int64 [1]  outputs cover chunk positions output_offset .. S-1
ADAPTER_WEIGHTS = "adapter_weights"  # float32 [1, S, slots]  per-position mixture of adapter slots
ADAPTER_GATE = "adapter_gate"  # float32 [1, S]  1: conversion adapter on (diffusion), 0: off (the AR base)
TOPK_IDS = "topk_ids"  # int64 [1, S', top_k]  S' = S - output_offset; row i predicts token i+1 (shift)
TOPK_LOGITS = "topk_logits"  # float32 [1, S', top_k]  descending
LOGSUMEXP = "logsumexp"  # float32 [1, S']  over the whole vocabulary
ENTROPY = "entropy"  # float32 [1, S']  nats, whole vocabulary, temperature 1
QUERY = "query"  # float32 [1, S', hidden]  L2-normalised final hidden state, for DGR retrieval
# A graph over a key/value buffer (the cpu target's; onnx_graph/attention.py) takes where its rows
# end: the past P is the buffer's first P positions, whatever its length. (Its causal-only AR graph
# takes no block_ids.)
SEQLENS_K = "seqlens_k"  # int32 [1]  P + S - 1
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"  # int32 scalar  P + S


def past_key(layer: int) -> str:
    return f"past_key.{layer}"  # float32 [1, kv_heads, P, head_dim], keys after RoPE


def past_value(layer: int) -> str:
    return f"past_value.{layer}"


def present_key(layer: int) -> str:
    return f"present_key.{layer}"  # float32 [1, kv_heads, P + S, head_dim] (a buffer graph: past's length)


def present_value(layer: int) -> str:
    return f"present_value.{layer}"


BANK_WIDTH = "bank_width"  # the slots·rank axis of adapter.{t}.a/b: K·r with a bank bound, or 0


def adapter_a(target: str) -> str:
    return f"adapter.{target}.a"  # float32 [layers, in_features, slots * rank]: bank factors, below


def adapter_b(target: str) -> str:
    return f"adapter.{target}.b"  # float32 [layers, slots * rank, out_features], LoRA scale folded in


# --- linear and LoRA shapes (one convention for the exporter, every runtime and the hub) ------
# A linear computes y = W x with W [out_features, in_features] (torch's order). A linear's size
# as a pair is always (in_features, out_features): `Features`. A LoRA on it, W + s·B A, is held
# in one of two layouts:
#
#   static factors  A [rank, in], B [out, rank]
#       PEFT's layout: adapter files, the conversion adapter baked into the graph, hub updates
#   bank factors    a [layers, in, rank], b [layers, rank, out]
#       the graph's adapter.{t}.a / .b and banks/: a = Aᵀ and b = s·Bᵀ stacked over layers, the
#       scale folded in (for row vectors y = x Wᵀ + x a b)
#
# A bank of K slots of rank r has rank K·r, slot k in columns (of a) / rows (of b) k·r .. (k+1)·r − 1.


class Features(NamedTuple):
    """A linear's size: x [..., in_features] -> y [..., out_features]."""

    in_features: int
    out_features: int


def linear_features(
    hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, intermediate_size: int | None = None
) -> dict[str, Features]:
    """Every projection of a LLaMA-family layer (grouped KV heads: k/v are narrower than q); the
    MLP's only when `intermediate_size` is known."""
    q, kv = num_heads * head_dim, num_kv_heads * head_dim
    features = {
        "q_proj": Features(hidden_size, q),
        "k_proj": Features(hidden_size, kv),
        "v_proj": Features(hidden_size, kv),
        "o_proj": Features(q, hidden_size),
    }
    if intermediate_size:
        features["gate_proj"] = Features(hidden_size, intermediate_size)
        features["up_proj"] = Features(hidden_size, intermediate_size)
        features["down_proj"] = Features(intermediate_size, hidden_size)
    return features


def static_lora_shapes(features: Features, rank: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(A, B) shapes of a static LoRA on one linear: A [rank, in], B [out, rank]."""
    return (rank, features.in_features), (features.out_features, rank)


def bank_factor_shapes(
    features: Features, layers: int, rank: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(a, b) shapes of one target's bank factors over all layers: a [layers, in, rank],
    b [layers, rank, out] (`rank`: slots · rank for the graph's inputs)."""
    return (layers, features.in_features, rank), (layers, rank, features.out_features)


@dataclass(frozen=True)
class ArtifactConfig:
    """What a runtime needs to know about an exported model, written as config.json."""

    architecture: str  # registered name, e.g. "llama", "qwen2", "qwen3"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position: int  # longest context the graph was validated for
    mask_token_id: int  # the token the diffusion model treats as [MASK]
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    shift: bool = True  # output row i predicts token i+1 (AR head reused, as DiffuLLaMA / Dream)
    block_size: int = 8  # default BD3LM block; small blocks convert far better than whole-span MDLM
    top_k: int = 32  # candidates per position the graph returns
    adapter_targets: tuple[str, ...] = ("q_proj", "v_proj")
    adapter_slots: int = 8  # K: TALoRA banks + DGR retrieval slots composed per position
    adapter_rank: int = 4
    # The graph takes adapter_gate: the conversion adapter is a per-row switch, so rows with gate 0
    # compute the base AR model exactly (the verified sampler's verifier rows).
    adapter_gate: bool = False
    # The directory also ships AR_GRAPH_NAME: the rows with gate 0 alone, for runs of the `ar` sampler
    ar_graph: bool = False
    timestep_groups: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)  # coarse / domain / fine boundaries in t
    targets: tuple[str, ...] = ("cpu",)  # execution providers built for (validated: source["validated_on"])
    attention: str = "mha"  # attention formulation in the graph: "attention23", "gqa", "mha", "matmul"
    quantization: str = "q4"  # "q4" (MatMulNBits, block 32), "widened"/"int8" (the wasm target) or "fp32"
    accuracy_level: int = 4
    requires_onnxruntime: str = ""  # the oldest onnxruntime that runs the graph's ops ("": not recorded)
    chat_template: str | None = None
    # Samplers the model was trained for (the conversion adapter's objective, e.g. ("bd3lm",)):
    # another one runs but denoises poorly. Empty: unknown (an unconverted or older model): all.
    samplers: tuple[str, ...] = ()
    source: dict = field(default_factory=dict)  # checkpoint path/hash, exactness report, validation metrics

    def to_json(self) -> str:
        return json.dumps({"format": ARTIFACT_FORMAT, **asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict) -> ArtifactConfig:
        if raw.get("format") != ARTIFACT_FORMAT:
            raise RuvdllmError(f"config.json: artifact format {raw.get('format')!r} is not {ARTIFACT_FORMAT}")
        known = {f.name: f for f in fields(cls)}
        missing = [
            n
            for n, f in known.items()
            if n not in raw and f.default is MISSING and f.default_factory is MISSING
        ]
        if missing:
            raise RuvdllmError(f"config.json: missing fields {', '.join(missing)}")
        values = {}
        for name in known:
            if name in raw:
                value = raw[name]
                values[name] = tuple(value) if isinstance(value, list) else value
        config = cls(**values)
        problem = config.problem()
        if problem:
            raise RuvdllmError(f"config.json: {problem}")
        return config

    def problem(self) -> str | None:
        """What makes this config impossible for its graph, or None: a size that is not a positive
        integer, a token id outside the vocabulary (which onnxruntime would meet as an index out
        of bounds in the middle of a generation)."""
        sizes = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
        for name in (*sizes, "max_position", "block_size", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                return f"{name} {value!r}: must be a whole number >= 1"
        tokens = [("mask_token_id", self.mask_token_id), ("bos_token_id", self.bos_token_id)]
        tokens += [("pad_token_id", self.pad_token_id), *(("eos_token_ids", t) for t in self.eos_token_ids)]
        for name, token in tokens:
            if token is not None and not (isinstance(token, int) and 0 <= token < self.vocab_size):
                return f"{name} {token!r}: outside the vocabulary 0..{self.vocab_size - 1}"
        return None


# Samplers whose output is the base (AR) model's, whatever the drafts: never "not trained for".
BASE_MODEL_SAMPLERS = ("verified", "ar")


def sampler_warning(config: ArtifactConfig, sampler: str) -> str | None:
    """One line for a sampler the model was not trained for (config `samplers`); None when it was,
    when the config does not say, or when the output is the base model's (BASE_MODEL_SAMPLERS)."""
    if not config.samplers or sampler in config.samplers or sampler in BASE_MODEL_SAMPLERS:
        return None
    return (
        f"sampler {sampler}: this model was converted for {', '.join(config.samplers)} only "
        "and denoises poorly with it (config.json `samplers`)"
    )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def is_gzip_copy(path: Path) -> bool:
    """A `.gz` file beside the file it is a copy of (not part of the artifact's contents)."""
    return path.name.endswith(GZIP_SUFFIX) and path.with_name(path.name[: -len(GZIP_SUFFIX)]).is_file()


def write_manifest(directory: Path) -> dict:
    """Hash every file under `directory` (except the manifest itself and gzip copies) into manifest.json."""
    directory = Path(directory)
    files = {}
    listed = (
        p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME and not is_gzip_copy(p)
    )
    for path in sorted(listed):
        rel = path.relative_to(directory).as_posix()
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {"format": ARTIFACT_FORMAT, "files": files}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def write_gzip_copies(directory: Path, level: int = GZIP_LEVEL) -> list[Path]:
    """Write `name.gz` beside every file the manifest lists where gzip saves at least
    GZIP_MIN_SAVING, so a web server can send the model compressed without compressing ~100 MB per
    download. Byte-reproducible (no name or time in the gzip header). Returns the copies written."""
    import gzip
    import shutil

    directory = Path(directory)
    written = []
    for rel in sorted(json.loads((directory / MANIFEST_NAME).read_text())["files"]):
        path = directory / rel
        copy = path.with_name(path.name + GZIP_SUFFIX)
        partial = path.with_name(f".{path.name}{GZIP_SUFFIX}.partial")
        with open(path, "rb") as source, open(partial, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0) as packed:
                shutil.copyfileobj(source, packed, 1 << 20)
        if partial.stat().st_size <= (1 - GZIP_MIN_SAVING) * path.stat().st_size:
            os.replace(partial, copy)
            written.append(copy)
        else:
            partial.unlink()
            copy.unlink(missing_ok=True)  # a copy of an earlier version of the file
    return written


def verify_manifest(directory: Path, full_hash: bool = True) -> dict:
    """Check that every file the manifest names exists with its size (and hash): raise on the first
    that does not, naming it. Returns the manifest."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise RuvdllmError(f"{directory}: not a model directory (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["files"]
    except (ValueError, KeyError) as exc:
        raise RuvdllmError(f"{manifest_path}: unreadable manifest ({exc})") from None
    for rel, entry in entries.items():
        path = directory / rel
        if not path.is_file():
            raise RuvdllmError(f"{path}: listed in the manifest but missing")
        if path.stat().st_size != entry["bytes"]:
            raise RuvdllmError(
                f"{path}: {path.stat().st_size} bytes, the manifest says {entry['bytes']} (truncated or replaced)"
            )
        if full_hash and sha256_file(path) != entry["sha256"]:
            raise RuvdllmError(f"{path}: sha256 does not match the manifest (corrupt or modified)")
    return manifest


def load_config(directory: Path) -> ArtifactConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise RuvdllmError(f"{directory}: not a model directory (no {CONFIG_NAME})")
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise RuvdllmError(f"{path}: not valid JSON ({exc})") from None
    return ArtifactConfig.from_dict(raw)


def replace_directory_atomically(staging: Path, final: Path) -> None:
    """Move a fully written staging directory into place: never a half-written artifact."""
    os.replace(staging, final)
