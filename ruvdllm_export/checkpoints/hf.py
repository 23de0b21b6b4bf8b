"""Read a Hugging Face model directory: config.json + *.safetensors (single or sharded), no torch.

Tensors are read lazily (checkpoints/lazy.py) with safetensors' numpy API over the mapped file. numpy has no bfloat16, and most released LLaMA / Qwen
checkpoints are bf16, so BF16 tensors are read from the file's own header offsets instead and
widened to float32 by a 16-bit shift (bf16 is the top half of a float32: exact).
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

import numpy as np
from safetensors import safe_open

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints import rope_config
from ruvdllm_export.checkpoints.architectures import Architecture, by_hf_class, check_weights
from ruvdllm_export.checkpoints.lazy import LazyWeights
from ruvdllm_export.spec import LM_HEAD, ModelSpec

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved; recomputed from rope_theta


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise RuvdllmError(f"{directory}: not a Hugging Face model directory (no config.json)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise RuvdllmError(f"{path}: not valid JSON ({exc})") from None


def spec_from_config(config: dict, where: str) -> tuple[ModelSpec, Architecture]:
    classes = config.get("architectures") or []
    if len(classes) != 1:
        raise RuvdllmError(f"{where}: expected one entry in 'architectures', found {classes!r}")
    arch = by_hf_class(classes[0], where)
    if config.get("hidden_act", "silu") != "silu":
        raise RuvdllmError(f"{where}: activation {config['hidden_act']!r} is not supported (only silu)")
    if config.get("mlp_bias") or (config.get("attention_bias") and not arch.attention_bias):
        raise RuvdllmError(f"{where}: linear biases beyond Qwen2's q/k/v biases are not supported")
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or hidden // heads)
        max_position = int(config.get("max_position_embeddings", 2048))
        theta, scaling = rope_config.from_hf_config(
            config, arch.default_rope_theta, head_dim, max_position, where
        )
        eos = config.get("eos_token_id")
        spec = ModelSpec(
            architecture=arch.name,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position=max_position,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=arch.attention_bias,
            qk_norm=arch.qk_norm,
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
            pad_token_id=config.get("pad_token_id"),
        )
    except KeyError as exc:
        raise RuvdllmError(f"{where}: missing {exc.args[0]!r}") from None
    return spec, arch


def safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise RuvdllmError(f"{index}: unreadable shard index ({exc})") from None
        files = [directory / shard for shard in shards]
        for file in files:
            if not file.is_file():
                raise RuvdllmError(f"{file}: listed in {index.name} but missing")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise RuvdllmError(f"{directory}: no *.safetensors weights (other weight formats are not supported)")
    return files


def _bf16_tensor(path: Path, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Read one BF16 tensor (rows start..stop of it) by the header's data offsets (numpy cannot
    hold bfloat16), widened straight into its float32 result through a mapping of the file: no
    bytes copy, no temporaries beyond the result (a 128k x 4k table is 2 GB as float32)."""
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
    begin, end = header[name]["data_offsets"]
    shape = header[name]["shape"]
    row = int(np.prod(shape[1:], dtype=np.int64)) * 2 if len(shape) > 1 else 2
    stop = shape[0] if stop is None else min(stop, shape[0])
    begin, end = begin + start * row, begin + stop * row
    raw = np.memmap(path, dtype="<u2", mode="r", offset=8 + header_len + begin, shape=((end - begin) // 2,))
    bits = np.empty(raw.shape, np.uint32)
    np.left_shift(raw, 16, out=bits, dtype=np.uint32)  # bf16 is the top half of a float32: exact
    del raw
    return bits.view(np.float32).reshape([stop - start, *shape[1:]])


def _read_tensor(path: Path, name: str, dtype: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """One tensor (or rows start..stop of it) as float32, read from the memory-mapped file when
    the exporter asks for it."""
    try:
        if dtype == "BF16":
            return _bf16_tensor(path, name, start, stop)
        with safe_open(str(path), framework="numpy") as handle:
            if start == 0 and stop is None:
                return np.asarray(handle.get_tensor(name), dtype=np.float32)
            return np.asarray(handle.get_slice(name)[start:stop], dtype=np.float32)
    except Exception as exc:  # SafetensorError, OSError (the file changed or went away since the scan)
        raise RuvdllmError(f"{path}: tensor {name} cannot be read ({exc})") from None


def scan_safetensors(path: Path) -> tuple[dict, dict[str, tuple[int, ...]], dict[str, str], dict]:
    """-> (name -> reader of its float32 array, name -> shape, name -> source dtype, name -> reader
    of its rows start..stop), from the
    header alone: safe_open checks the header's offsets against the file's size, so a truncated
    file fails here, before any long work, while no tensor data is read yet."""
    readers, shapes, dtypes, rows = {}, {}, {}, {}
    try:
        with safe_open(str(path), framework="numpy") as handle:
            for name in handle.keys():
                if name.endswith(IGNORED_SUFFIXES):
                    continue
                tensor = handle.get_slice(name)
                dtype = tensor.get_dtype()
                if dtype not in ("BF16", "F32", "F16", "F64"):
                    raise RuvdllmError(
                        f"{path}: tensor {name} has dtype {dtype}; only F32/F16/BF16 are supported"
                    )
                readers[name] = functools.partial(_read_tensor, path, name, dtype)
                rows[name] = functools.partial(_read_tensor, path, name, dtype)
                shapes[name], dtypes[name] = tuple(tensor.get_shape()), dtype
    except RuvdllmError:
        raise
    except (
        Exception
    ) as exc:  # SafetensorError (not exported as a class in every version), OSError, ValueError
        raise RuvdllmError(f"{path}: not a readable safetensors file, truncated or corrupt ({exc})") from None
    return readers, shapes, dtypes, rows


def read_hf_dir(directory: Path):
    """-> (spec, weights (LazyWeights: each tensor read on access), exactness, files read)."""
    where = str(directory / "config.json")
    spec, _ = spec_from_config(read_config(directory), where)
    readers, shapes, exactness, rows = {}, {}, {}, {}
    files = safetensors_files(directory)
    for file in files:
        file_readers, file_shapes, dtypes, file_rows = scan_safetensors(file)
        readers.update(file_readers)
        rows.update(file_rows)
        shapes.update(file_shapes)
        exactness.update({n: "float" if d == "F32" else f"float from {d}" for n, d in dtypes.items()})
    weights = LazyWeights(readers, shapes, rows)
    if spec.tie_word_embeddings and LM_HEAD in weights:  # some tied checkpoints save the copy too
        weights = weights.without(LM_HEAD)
        del exactness[LM_HEAD]
    where_weights = str(files[0] if len(files) == 1 else directory)
    check_weights(spec, weights, where_weights)
    return spec, weights, exactness, files
