"""The AR model's own graph, shipped beside a model whose conversion adapter has the per-row switch.

Rows with adapter_gate 0 and all adapter weights 0 compute the checkpoint the model was converted
from (docs/sampling.md §11), but a forward of the whole graph still runs the conversion adapter's
LoRA columns and the adapter bank's branches for them, only to multiply their results by 0. Where
the `ar` sampler is what runs (sampler auto picks it on CPUs where extra rows cost too much,
runtime/row_cost.py), a graph without those branches computes the same rows for less: the same
builder with no static LoRA and no adapter slots, 0.84-0.89× the one-row forward's time on
SmolLM2 (benchmarks/README.md, "The AR graph").

Where the target's graphs attend over a key/value buffer the runtime owns (the cpu target's
GraphOptions.kv_buffer, onnx_graph/attention.py), so does its AR graph, and since rows of the AR
model are causal, GroupQueryAttention's own causal masking replaces the block visibility
(0.64-0.91× the copying AR graph's one-row forward at 64-768 cached positions on SmolLM2,
benchmarks/README.md, "The AR graph over a key/value buffer"). The cuda target's AR graph keeps
the full graph's attention: CUDA's GroupQueryAttention takes float16 only.

It holds no weights of its own. Every initializer it has, the full graph has too, under the same
name and with the same bytes (the same prepared weights through the same builder), so its
TensorProtos point into the full graph's data file (`SharedExternalData`): a model directory
grows by one small .onnx file. A tensor that is not there byte for byte is a bug, refused here
rather than shipped.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import onnx
from onnx import TensorProto

from ruvdllm_export.onnx_graph.builder import build_graph
from ruvdllm_export.onnx_graph.graph import ExternalData
from ruvdllm_export.onnx_graph.options import TARGET_DEFAULTS, GraphOptions

# Where a process runs the `ar` sampler alone and can open a second graph: the native runtimes. (The
# browser decides nothing by row cost, and its wasm target's linears are widened from files of
# their own.)
TARGETS = ("cpu", "cuda")
SHAREABLE = ("q4", "fp32")  # linears whose bytes the builder writes into the one data file


def wants_ar_graph(options: GraphOptions, has_static_lora: bool, target: str) -> bool:
    """A model gets an AR graph when its rows can be switched to the base model, on a native
    target, with linears the AR graph can share."""
    return (
        has_static_lora and options.adapter_switch and target in TARGETS and options.quantization in SHAREABLE
    )


def ar_options(options: GraphOptions, target: str) -> GraphOptions:
    """The full graph's options without the adapter bank (its prepared weights are the same), with
    causal rows over a key/value buffer where the target's graphs attend over one."""
    if not TARGET_DEFAULTS[target].get("kv_buffer", False):
        return replace(options, adapter_slots=0)
    return replace(options, adapter_slots=0, attention="gqa", kv_buffer=True, causal_only=True)


def external_index(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Initializer name -> (offset, length) in the external data file, for those stored there."""
    index = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            entry = {e.key: e.value for e in tensor.external_data}
            index[tensor.name] = (int(entry.get("offset", 0)), int(entry["length"]))
    return index


class SharedExternalData(ExternalData):
    """An ExternalData that writes nothing: each large initializer must already be in `path` (the
    full graph's data file, `index` its initializers' places) under its name, with the same
    bytes; its TensorProto points there."""

    def __init__(self, path: Path | str, index: dict[str, tuple[int, int]], size_threshold: int = 1024):
        self.path = Path(path)
        self.size_threshold = size_threshold
        self.index = index
        self._fd = os.open(self.path, os.O_RDONLY)

    def _place(self, name: str, raw) -> int:
        offset, length = self.index.get(name, (0, -1))
        if length != len(raw) or os.pread(self._fd, length, offset) != raw:
            raise ValueError(f"AR graph: initializer {name!r} is not in {self.path.name} with the same bytes")
        return offset

    def close(self) -> None:
        os.close(self._fd)


def build_ar_graph(
    spec, weights, options: GraphOptions, target: str, shared: SharedExternalData | None = None
) -> onnx.ModelProto:
    """The AR graph of the model `build_graph(spec, weights, options, lora=...)` built for
    `target`; with `shared` (over that build's external data file) its weights point into that
    file, otherwise they are held in the proto (the tests' tiny models)."""
    return build_graph(spec, weights, ar_options(options, target), external_data=shared)
