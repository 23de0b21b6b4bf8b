"""Validation of a large export window by window: a few decoder layers at a time, each running the
shipped file's own weight bytes, so onnxruntime never holds the whole model.

onnxruntime's session of the full graph holds the whole artifact (about its size on disk) beside
the reference; for a 1B model that alone passes the exporter's memory bound. A window is the
graph the builder makes for a model of `size` layers (embedding, layers start..start+size, final
norm, head), whose initializers are pointed at the shipped model.onnx.data wherever the shipped
graph has the same tensor (layer l of the window is layer start+l of the file):

    shipped model.onnx.data ──offsets──► window graph (layers renamed 0..size-1) ─ onnxruntime ─┐
    held weights of layers start.. ─────► StreamedReference over the window ───────────────────┴─ validate_export

Each window runs validate_export's whole check (cached prefix, block-causal chunk with masks and
adapter mixture, the paragraph; gate 0 rows): a wrong byte in any layer of the file, the table or
the rotary caches fails its window. What a window cannot see is the shipped graph's wiring
between windows, which the builder produces by the same code (onnx.checker still checks the
whole file, and the tests check whole graphs against transformers).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import onnx

from runtime.widening import FLOATS_SUFFIX
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.onnx_graph import GraphOptions, build_graph
from ruvdllm_export.spec import ModelSpec, weight_shape
from ruvdllm_export.validate import check_graph, validate_export

WINDOW_NAME = ".window.onnx"  # beside the shipped graph, so both data locations resolve
_LAYER = re.compile(r"layers\.(\d+)(?=[./])")


def layer_windows(num_layers: int, size: int) -> list[range]:
    """Consecutive windows of `size` layers covering all of them (the last may be shorter)."""
    return [range(start, min(start + size, num_layers)) for start in range(0, num_layers, size)]


def _shift(name: str, start: int) -> str:
    """A window's name for layer l -> the model's name for layer start + l."""
    return _LAYER.sub(lambda m: f"layers.{int(m.group(1)) + start}", name)


class WindowWeights(Mapping):
    """The weights of layers `window` renamed to 0..len(window)-1, with every non-layer tensor
    (table, head, final norm), read from `weights` on access."""

    def __init__(self, weights: Mapping, window: range):
        self.weights, self.window = weights, window
        names = []
        for name in weights:
            match = _LAYER.search(name)
            if match is None:
                names.append(name)
            elif int(match.group(1)) in window:
                names.append(_LAYER.sub(lambda m: f"layers.{int(m.group(1)) - window.start}", name))
        self._names = names
        self.shapes = {n: weight_shape(weights, _shift(n, window.start)) for n in names}
        if hasattr(weights, "prepared_for"):
            self.prepared_for = weights.prepared_for
        if hasattr(weights, "reads_rows"):  # tables are never renamed: rows pass straight through
            self.reads_rows, self.rows = weights.reads_rows, weights.rows

    def __getitem__(self, name: str):
        if name not in self.shapes:
            raise KeyError(name)
        return self.weights[_shift(name, self.window.start)]

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self.shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _window_lora(lora: dict, window: range) -> dict:
    out = {}
    for name, factors in lora.items():
        match = _LAYER.search(name)
        if match is None:
            out[name] = factors
        elif int(match.group(1)) in window:
            out[_LAYER.sub(lambda m: f"layers.{int(m.group(1)) - window.start}", name)] = factors
    return out


def _point_at_shipped(window_model: onnx.ModelProto, shipped: dict, start: int) -> tuple[int, int]:
    """Point the window's external initializers at the shipped file's bytes of the same tensor;
    -> (bytes read from the shipped file, bytes of the window's own). A tensor the shipped graph
    holds under the same name with another size means the two graphs differ: an error."""
    served = own = 0
    for tensor in window_model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        if info["location"].endswith(FLOATS_SUFFIX):  # widened from the window's own blocks
            continue
        length = int(info["length"])
        twin = shipped.get(_shift(tensor.name, start))
        if twin is None:
            own += length
            continue
        if int(twin["length"]) != length:
            raise ValueError(f"{tensor.name}: {length} bytes in the window, {twin['length']} in the file")
        del tensor.external_data[:]  # set_external_data wants raw bytes, which are in the file
        for key in ("location", "offset", "length"):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(twin[key])
        served += length
    return served, own


def validate_by_windows(
    model_path: Path,
    spec: ModelSpec,
    options: GraphOptions,
    held_weights: Mapping,
    mask_token_id: int,
    paragraph_ids: list[int],
    size: int,
    source_weights: Mapping | None = None,
    min_source_agreement: float | None = None,
    base_weights: Mapping | None = None,
    lora: dict | None = None,
    mark=None,
) -> dict:
    """validate_export's checks on each window of `size` layers over the shipped file; the report
    keeps each window's and the worst of each measure (config.json source.validation). `mark`:
    validate_export's, plus validate.window_graph (each window's graph built and saved)."""
    mark = mark or (lambda _: None)
    model_path = Path(model_path)
    check_graph(model_path)
    shipped_proto = onnx.load(str(model_path), load_external_data=False)
    shipped = {
        t.name: {e.key: e.value for e in t.external_data}
        for t in shipped_proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    }
    del shipped_proto
    window_path = model_path.parent / WINDOW_NAME
    own_data = model_path.parent / (WINDOW_NAME + ".data")
    windows, failures, served, own = [], [], 0, 0
    try:
        for window in layer_windows(spec.num_layers, size):
            window_spec = replace(spec, num_layers=len(window))
            held = WindowWeights(held_weights, window)
            window_lora = _window_lora(lora or {}, window)
            model = build_graph(window_spec, held, options, lora=window_lora, external_data=own_data)
            try:
                bytes_served, bytes_own = _point_at_shipped(model, shipped, window.start)
            except ValueError as exc:
                raise RuvdllmError(f"{model_path}: window {window.start}-{window.stop - 1}: {exc}") from None
            served, own = served + bytes_served, own + bytes_own
            onnx.save_model(model, str(window_path))
            del model
            mark("validate.window_graph")
            try:
                report = validate_export(
                    window_path,
                    window_spec,
                    options,
                    held,
                    mask_token_id,
                    paragraph_ids,
                    source_weights=None if source_weights is None else WindowWeights(source_weights, window),
                    base_weights=None if base_weights is None else WindowWeights(base_weights, window),
                    lora=window_lora,
                    mark=mark,
                )
            except RuvdllmError as exc:
                failures.append(f"layers {window.start}-{window.stop - 1}: {str(exc).split(': ', 1)[-1]}")
                continue
            report["layers"] = [window.start, window.stop - 1]
            windows.append(report)
    finally:
        window_path.unlink(missing_ok=True)
        own_data.unlink(missing_ok=True)
    if failures:
        raise RuvdllmError(f"{model_path}: {'; '.join(failures)}")
    worst = {key: min(w[key] for w in windows) for key in ("top1_agreement", "top1_agreement_vs_checkpoint")}
    if min_source_agreement is not None and worst["top1_agreement_vs_checkpoint"] < min_source_agreement:
        raise RuvdllmError(
            f"{model_path}: top-1 agreement with the checkpoint {worst['top1_agreement_vs_checkpoint']:.3f}"
            f" < {min_source_agreement} (worst window)"
        )
    first = windows[0]
    return {
        "onnx_checker": "passed",
        "onnxruntime": first["onnxruntime"],
        "execution_provider": first["execution_provider"],
        "reference": first["reference"],
        "tolerance": first["tolerance"],
        "windows": {"layers_per_window": size, "count": len(windows)},
        "bytes_from_the_shipped_file": served,
        "bytes_rebuilt_for_the_windows": own,
        "parity": {
            case: {
                key: (min if key == "top1" else max)(w["parity"][case][key] for w in windows)
                for key in first["parity"][case]
            }
            for case in first["parity"]
        },
        "parity_per_window": [{"layers": w["layers"], "parity": w["parity"]} for w in windows],
        "paragraph_tokens": first["paragraph_tokens"],
        **worst,
    }
