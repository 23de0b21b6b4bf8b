"""The conversion adapter file: what `ruvdllm convert` writes and `ruvdllm export` merges.

A safetensors file (numpy only: the export path never imports torch) holding PEFT-named factors
under the canonical weight names, exactly `reference.lora_state_dict`, in the static layout of
runtime/artifact.py:

    model.layers.{l}.self_attn.q_proj.lora_A.weight   [rank, in]
    model.layers.{l}.self_attn.q_proj.lora_B.weight   [out, rank]     (scale NOT folded in)
    model.embed_tokens.lora_A.weight                  [rank, vocab]   (optional target)

and string metadata:

    format       "ruvdllm-lora/1"
    (float32, or float16 to keep a committed file small; read back as float32)
    lora         JSON of reference.LoraConfig (rank, alpha, targets, seed): the scale is alpha / rank
    training     JSON: objective, block_size, mask_token_id, tokens seen, steps, held-out NLL
    base         JSON: the checkpoint's architecture and source sha256 (a mismatch is refused)

`read_static_lora` returns canonical weight name -> (a [rank, in], b [out, rank]) with the scale
folded into b: the `StaticLora` form the graph builder bakes in (onnx_graph/linear.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ruvdllm.errors import RuvdllmError

FORMAT = "ruvdllm-lora/1"
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True)
class AdapterFile:
    factors: dict[str, np.ndarray]  # PEFT name -> float32 factor, scale not folded in
    lora: dict  # LoraConfig.to_dict()
    training: dict
    base: dict

    @property
    def scaling(self) -> float:
        return float(self.lora["alpha"]) / int(self.lora["rank"])


def base_identity(checkpoint) -> dict:
    """What an adapter was trained against: enough to refuse merging it into another model."""
    source = checkpoint.source
    digest = source.get("sha256") or json.dumps(source.get("files", {}), sort_keys=True)
    spec = checkpoint.spec
    return {
        "architecture": spec.architecture,
        "hidden_size": spec.hidden_size,
        "num_layers": spec.num_layers,
        "vocab_size": spec.vocab_size,
        "source_sha256": digest,
        "mask_token_id": checkpoint.mask_token_id,
    }


def write_adapter(
    path: Path,
    factors: dict[str, np.ndarray],
    lora: dict,
    training: dict,
    base: dict,
    dtype: str = "float32",
) -> None:
    """Write atomically (temporary sibling, then rename): a reader never sees half a file.
    `dtype` "float16" halves the file (the committed default adapter); readers get float32."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial")
    metadata = {
        "format": FORMAT,
        "lora": json.dumps(lora),
        "training": json.dumps(training),
        "base": json.dumps(base),
    }
    tensors = {name: np.ascontiguousarray(value, dtype=np.dtype(dtype)) for name, value in factors.items()}
    save_file(tensors, str(staging), metadata=metadata)
    staging.replace(path)


def read_adapter(path: Path) -> AdapterFile:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RuvdllmError(f"{path}: no such adapter file")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            factors = {name: handle.get_tensor(name).astype(np.float32) for name in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for any malformed file
        raise RuvdllmError(f"{path}: not a safetensors adapter file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise RuvdllmError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    stems = {name.removesuffix(LORA_A).removesuffix(LORA_B) for name in factors}
    for stem in stems:
        if stem + LORA_A not in factors or stem + LORA_B not in factors:
            raise RuvdllmError(f"{path}: {stem} has only one of lora_A / lora_B")
    return AdapterFile(
        factors,
        json.loads(metadata["lora"]),
        json.loads(metadata.get("training", "{}")),
        json.loads(metadata.get("base", "{}")),
    )


BASE_KEYS = ("architecture", "hidden_size", "num_layers", "vocab_size")


def check_base(path: Path, got: dict, expected: dict, keys=BASE_KEYS) -> None:
    """Refuse an adapter trained for another base (keys it does not record are not checked)."""
    for key in keys:
        if key in got and key in expected and got[key] != expected[key]:
            raise RuvdllmError(f"{path}: trained for {key} {got[key]}, the checkpoint has {expected[key]}")


def check_warm_start(path: Path, adapter: AdapterFile, lora: dict, base: dict) -> None:
    """A run may start from `adapter` only when its factors fit inside this run's LoRA: the same
    base (its source file too: the factors corrected that file's quantization), the same targets
    and at most this run's rank. A lower rank or another alpha is fine: the factors are widened
    and rescaled to the same update (reference/lora.py `widened_lora_state`)."""
    check_base(path, adapter.base, base, (*BASE_KEYS, "source_sha256"))
    rank, alpha, targets = (
        int(adapter.lora["rank"]),
        float(adapter.lora["alpha"]),
        tuple(adapter.lora["targets"]),
    )
    if targets != tuple(lora["targets"]) or rank > int(lora["rank"]):
        raise RuvdllmError(
            f"{path}: rank {rank}, alpha {alpha:g}, targets {','.join(targets)}; this run has rank {lora['rank']}, "
            f"alpha {float(lora['alpha']):g}, targets {','.join(lora['targets'])} (a warm start needs the same "
            f"targets and a rank of at least {rank}: give --rank {rank} --targets {','.join(targets)})"
        )


def read_static_lora(path: Path, checkpoint=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Canonical weight name -> (a, b·scale): the graph builder's StaticLora factors. With a
    checkpoint, refuse an adapter trained for a different base."""
    adapter = read_adapter(path)
    if checkpoint is not None:
        check_base(path, adapter.base, base_identity(checkpoint))
    out = {}
    for name in adapter.factors:
        if name.endswith(LORA_A):
            stem = name.removesuffix(LORA_A)
            a = adapter.factors[name]
            b = adapter.factors[stem + LORA_B] * np.float32(adapter.scaling)
            out[f"{stem}.weight"] = (a.astype(np.float32), b.astype(np.float32))
    return out
