"""The torch model that computes what an exported model directory's graph computes, for training on it.

What an export holds (ruvdllm_export/export.py): the checkpoint's weights as the graph builder
prepared them (4-bit blocks, the 8-bit token table), plus the conversion adapter as gated float
side branches. So the reference is built the way the export validated itself and the golden tests
build theirs:

    checkpoint (config.source.path, sha256 checked) ─ prepare_weights(the export's options)
        ─ their float values ─ + the conversion adapter merged (config.source.static_adapter)
        ─ DiffusionLM (rotary table of the graph's length)

Adapter banks are not part of it: they are inputs of the graph (adapter.*), and the trainer passes
the bank it trains against at each forward, as the runtime does.

Equal up to float rounding at accuracy level 0; at the cpu default (level 4, int8 activations in
MatMulNBits) the graph's logits differ from the float reference's by about 5% of their range
(validate.py's tolerances), so a gradient from here is the float model's, not the graph's.
"""

from __future__ import annotations

from pathlib import Path

from runtime.artifact import ArtifactConfig, load_config, sha256_file
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.onnx_graph import GraphOptions, graph_weights_as_float, prepare_weights
from ruvdllm_export.reference import DiffusionLM


def graph_options(config: ArtifactConfig) -> GraphOptions:
    """The options an export was built with, as far as they change the numbers."""
    return GraphOptions(
        quantization=config.quantization,
        attention=config.attention,
        accuracy_level=config.accuracy_level,
        top_k=config.top_k,
        adapter_targets=tuple(config.adapter_targets) or GraphOptions.adapter_targets,
        adapter_slots=config.adapter_slots,
        adapter_rank=config.adapter_rank,
        max_position=config.max_position,
        adapter_switch=config.adapter_gate,
    )


def reference_from_weights(
    spec, weights: dict, options: GraphOptions, mask_token_id: int, lora: dict | None = None
) -> DiffusionLM:
    """The float torch model of what a graph built from (spec, weights, options, lora) holds, the
    static LoRA (name -> StaticLora) merged in: the adapter-gate-1 rows the diffusion samplers run."""
    from ruvdllm_export.export import merge_lora

    held = graph_weights_as_float(prepare_weights(spec, weights, options))
    spec, merged = merge_lora(spec, held, lora or {})
    del held
    model = DiffusionLM(spec, merged, mask_token_id, options.top_k)
    return model.set_rope_context(options.max_position or spec.max_position).eval()


def reference_sources(model_dir: Path) -> tuple[ArtifactConfig, Path, Path | None]:
    """(the model's config, its checkpoint, its conversion adapter or None) as config.json names
    them, checked to be on this machine: what building the reference needs, found without loading or
    hashing anything (a command deciding whether it could train first order); RuvdllmError if not."""
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    source = config.source or {}
    path = source.get("path")
    if not path or not Path(path).exists():
        raise RuvdllmError(f"{model_dir}: its checkpoint {path or '(not recorded)'} is not on this machine")
    adapter = source.get("static_adapter")
    adapter_path = Path(adapter.get("path", "")) if adapter else None
    if adapter_path is not None and not adapter_path.is_file():
        raise RuvdllmError(f"{model_dir}: its conversion adapter {adapter_path} is gone or changed")
    return config, Path(path), adapter_path


def reference_for_artifact(model_dir: Path) -> DiffusionLM:
    """The reference of an exported model directory, from the checkpoint and conversion adapter its
    config.json names; RuvdllmError when either is gone or no longer the file that was exported."""
    from ruvdllm_export.checkpoints import load_checkpoint
    from ruvdllm_export.export import load_static_adapter

    config, path, adapter_path = reference_sources(model_dir)
    source = config.source or {}
    loaded = load_checkpoint(path)
    for key in ("sha256", "files"):
        if key in source and loaded.source.get(key) != source[key]:
            raise RuvdllmError(f"{model_dir}: the checkpoint at {path} changed since the export")
    lora = None
    if adapter_path is not None:
        if sha256_file(adapter_path) != source["static_adapter"].get("sha256"):
            raise RuvdllmError(f"{model_dir}: its conversion adapter {adapter_path} is gone or changed")
        lora = load_static_adapter(adapter_path, loaded)
    return reference_from_weights(
        loaded.spec, loaded.weights, graph_options(config), config.mask_token_id, lora
    )
