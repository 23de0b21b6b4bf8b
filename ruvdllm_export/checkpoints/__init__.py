"""Checkpoints in: Hugging Face safetensors directories and GGUF files of LLaMA / Qwen2 / Qwen3.

    load_checkpoint(path) -> LoadedCheckpoint(spec, weights, tokenizer, mask_token_id, exactness, source)

Weights use the canonical names of ruvdllm_export/spec.py: float32 arrays, or Q4Tensor where the
file already holds 4-bit blocks that map exactly (GGUF Q4_0 / Q4_1 / Q4_K). They are read lazily,
one tensor per access, from the memory-mapped file (checkpoints/lazy.py).
"""

from ruvdllm_export.checkpoints.architectures import ARCHITECTURES, Architecture, register
from ruvdllm_export.checkpoints.load import load_checkpoint
from ruvdllm_export.checkpoints.loaded import LoadedCheckpoint

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "LoadedCheckpoint",
    "load_checkpoint",
    "register",
]
