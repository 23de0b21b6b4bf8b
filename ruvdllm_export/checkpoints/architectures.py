"""The decoder families the readers understand, registered by name.

Everything that differs between LLaMA, Qwen2 and Qwen3 as far as *reading* goes is data here;
the readers look an architecture up (by Hugging Face class or by GGUF `general.architecture`)
and never branch on its name. Add a family with `register(Architecture(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ruvdllm.errors import RuvdllmError
from ruvdllm_export.spec import ModelSpec, expected_shapes, weight_shape


@dataclass(frozen=True)
class Architecture:
    name: str  # ModelSpec.architecture
    hf_classes: tuple[str, ...]  # config.json "architectures"
    gguf_arch: str  # GGUF general.architecture
    attention_bias: bool = False  # q/k/v biases (Qwen2 always has them)
    qk_norm: bool = False  # per-head RMSNorm of q and k (Qwen3)
    gguf_permuted_qk: bool = False  # llama.cpp's converter permutes q/k rows for its interleaved rope
    default_rope_theta: float = 10000.0  # when a config omits it


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


register(Architecture("llama", ("LlamaForCausalLM",), "llama", gguf_permuted_qk=True))
register(Architecture("qwen2", ("Qwen2ForCausalLM",), "qwen2", attention_bias=True, default_rope_theta=1e6))
register(Architecture("qwen3", ("Qwen3ForCausalLM",), "qwen3", qk_norm=True, default_rope_theta=1e6))


def _supported() -> str:
    return ", ".join(sorted(c for a in ARCHITECTURES.values() for c in a.hf_classes))


def by_hf_class(hf_class: str, where: str) -> Architecture:
    for arch in ARCHITECTURES.values():
        if hf_class in arch.hf_classes:
            return arch
    raise RuvdllmError(f"{where}: architecture {hf_class!r} is not supported (supported: {_supported()})")


def by_gguf_arch(gguf_arch: str, where: str) -> Architecture:
    for arch in ARCHITECTURES.values():
        if gguf_arch == arch.gguf_arch:
            return arch
    known = ", ".join(sorted(a.gguf_arch for a in ARCHITECTURES.values()))
    raise RuvdllmError(f"{where}: GGUF architecture {gguf_arch!r} is not supported (supported: {known})")


def check_weights(spec: ModelSpec, weights: dict, where: str, display=lambda name: name) -> None:
    """Raise naming the first missing, unexpected or mis-shaped tensor. `display` maps a canonical
    name to the file's own name for the message."""
    expected = expected_shapes(spec)
    for name, shape in expected.items():
        if name not in weights:
            raise RuvdllmError(f"{where}: missing tensor {display(name)}")
        got = weight_shape(weights, name)
        if got != shape:
            raise RuvdllmError(
                f"{where}: tensor {display(name)} has shape {list(got)}, the config implies {list(shape)}"
            )
    for name in weights:
        if name not in expected:
            raise RuvdllmError(f"{where}: unexpected tensor {display(name)} for a {spec.architecture} model")
