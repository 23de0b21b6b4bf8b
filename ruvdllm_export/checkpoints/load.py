"""load_checkpoint: a Hugging Face directory or a GGUF file -> LoadedCheckpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from runtime.artifact import sha256_file
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints.gguf_reader import read_gguf
from ruvdllm_export.checkpoints.hf import read_hf_dir
from ruvdllm_export.checkpoints.loaded import LoadedCheckpoint
from ruvdllm_export.checkpoints.tokenizer import (
    chat_template_of,
    check_vocab,
    choose_mask_token,
    load_tokenizer_json,
    tokenizer_from_gguf,
)
from ruvdllm_export.spec import ModelSpec

GGUF_MAGIC = b"GGUF"


def load_checkpoint(path: Path | str) -> LoadedCheckpoint:
    """Read a checkpoint: a Hugging Face model directory (config.json + *.safetensors +
    tokenizer.json) or a .gguf file. Raises RuvdllmError naming the file on anything wrong."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_hf(path)
    if not path.is_file():
        raise RuvdllmError(f"{path}: no such file or directory")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == GGUF_MAGIC:
        return _load_gguf(path)
    if path.name == "config.json" or path.suffix == ".safetensors":
        return _load_hf(path.parent)
    raise RuvdllmError(f"{path}: neither a GGUF file nor a Hugging Face model directory")


def _used_ids(spec: ModelSpec, extra=()) -> set[int]:
    ids = {spec.bos_token_id, spec.pad_token_id, *spec.eos_token_ids, *extra}
    return {i for i in ids if i is not None}


def _load_hf(directory: Path) -> LoadedCheckpoint:
    spec, weights, exactness, files = read_hf_dir(directory)
    tokenizer_path = directory / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise RuvdllmError(
            f"{directory}: no tokenizer.json (only fast tokenizers in tokenizer.json are supported)"
        )
    tokenizer = load_tokenizer_json(tokenizer_path)
    check_vocab(tokenizer, spec.vocab_size, str(tokenizer_path))
    spec = dataclasses.replace(spec, chat_template=chat_template_of(directory))
    mask = choose_mask_token(
        tokenizer, spec.vocab_size, _used_ids(spec), spec.chat_template, str(tokenizer_path)
    )
    hashed = [directory / "config.json", tokenizer_path, *files]
    source = {
        "path": str(directory),
        "format": "huggingface",
        "bytes": sum(f.stat().st_size for f in hashed),
        "files": {f.name: sha256_file(f) for f in hashed},
    }
    return LoadedCheckpoint(spec, weights, tokenizer, mask, exactness, source)


def _load_gguf(path: Path) -> LoadedCheckpoint:
    spec, weights, exactness, meta, types = read_gguf(path)
    where = str(path)
    tokenizer = tokenizer_from_gguf(meta, where)
    check_vocab(tokenizer, spec.vocab_size, where)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    mask = choose_mask_token(tokenizer, spec.vocab_size, _used_ids(spec, [unk]), spec.chat_template, where)
    source = {
        "path": str(path),
        "format": "gguf",
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "tensor_types": types,
    }
    return LoadedCheckpoint(spec, weights, tokenizer, mask, exactness, source)
