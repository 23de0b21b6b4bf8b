"""The graph's prepared weights written to a scratch file as they are made, read back per access.

`prepare_weights` returns every tensor's packed form at once (0.65 bytes per linear weight, 1.3
per token-table entry): for a 1B model that is 0.8 GB held from quantization through validation,
beside onnxruntime's own copy. `spill_prepared` makes the same forms one tensor at a time and
appends each to a scratch file; `SpilledWeights` reads one back when it is asked for, so the graph
build and the layer-streamed reference hold one tensor (one layer) at a time:

    checkpoint (lazy) ─ one tensor ─ prepare (Q4 / Q8 / float) ─ pickle ─► scratch file
                                                                            │ offsets
    build_graph / StreamedReference ◄── SpilledWeights[name] (unpickled on access) ┘

A token table that the checkpoint can read by rows (LazyWeights.rows) is prepared in slices of
ROWS_PER_CHUNK rows and never widened to float32 whole (a 128k x 2k table is 1 GB in float32).
The scratch file is this process's own, written and read by it, and removed by `close()`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ruvdllm_export.onnx_graph.builder import _as_table, prepare_weights
from ruvdllm_export.onnx_graph.linear import Weight
from ruvdllm_export.onnx_graph.options import GraphOptions
from ruvdllm_export.onnx_graph.q8 import Q8Tensor, SplitQ8Tensor
from ruvdllm_export.quant.q4 import ROWS_PER_CHUNK, Q4Tensor, concat_rows, take_rows
from ruvdllm_export.spec import EMBED, LM_HEAD, ModelSpec, weight_shape


class SpilledWeights(Mapping):
    """name -> prepared weight, unpickled from the scratch file on every access.

    `prepared_for` is the GraphOptions the forms were made for (build_graph then uses them as
    they are); `shapes` answers shape checks without reading."""

    def __init__(self, path: Path, options: GraphOptions):
        self.path = Path(path)
        self.prepared_for = options
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._where: dict[str, tuple[int, int]] = {}
        self._file = open(self.path, "w+b")  # noqa: SIM115 (closed by close())

    def put(self, name: str, value: Weight) -> None:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.seek(0, os.SEEK_END)
        self._where[name] = (self._file.tell(), len(data))
        self._file.write(data)
        self.shapes[name] = tuple(int(d) for d in value.shape)

    def __getitem__(self, name: str) -> Weight:
        offset, length = self._where[name]
        self._file.flush()
        return pickle.loads(os.pread(self._file.fileno(), length, offset))

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def close(self) -> None:
        """Close and delete the scratch file (the mapping is empty afterwards)."""
        self._file.close()
        self.path.unlink(missing_ok=True)
        self._where.clear()


def prepared_one_at_a_time(
    spec: ModelSpec, weights: Mapping[str, Weight], options: GraphOptions
) -> Iterator[tuple[str, Weight]]:
    """(name, prepare_weights' form of it), one tensor read at a time; a table the checkpoint
    reads by rows is prepared by rows."""
    for name in list(weights):
        if _is_table(spec, name, options) and getattr(weights, "reads_rows", lambda _: False)(name):
            yield name, _table_by_rows(weights, name, options)
        else:
            yield name, prepare_weights(spec, {name: weights[name]}, options)[name]


def spill_prepared(
    spec: ModelSpec, weights: Mapping[str, Weight], options: GraphOptions, scratch: Path
) -> SpilledWeights:
    """`prepare_weights(spec, weights, options)`'s forms, written to `scratch` one at a time."""
    spilled = SpilledWeights(scratch, options)
    try:
        for name, value in prepared_one_at_a_time(spec, weights, options):
            spilled.put(name, value)
            del value  # before the next tensor is read
    except BaseException:
        spilled.close()
        raise
    return spilled


def _is_table(spec: ModelSpec, name: str, options: GraphOptions) -> bool:
    tables = {EMBED} | ({LM_HEAD} if not spec.tie_word_embeddings else set())
    return options.quantization != "fp32" and name in tables


def _table_by_rows(weights, name: str, options: GraphOptions) -> Q4Tensor | Q8Tensor | SplitQ8Tensor:
    """The table's prepared form built slice by slice (rows quantize independently: the result
    equals preparing it whole, tested)."""
    rows = weight_shape(weights, name)[0]
    parts = [
        _as_table(
            weights.rows(name, start, start + ROWS_PER_CHUNK),
            options.table_bits,
            options.quantization == "q4" and options.accuracy_level != 4,
        )
        for start in range(0, rows, ROWS_PER_CHUNK)
    ]
    return concat_table_rows(parts)


def concat_table_rows(parts: list) -> Weight:
    """Stack row slices of one prepared table (all of the same form)."""
    first = parts[0]
    if isinstance(first, SplitQ8Tensor):
        return SplitQ8Tensor(q4=concat_rows([p.q4 for p in parts]), in_features=first.in_features)
    if isinstance(first, Q8Tensor):
        return Q8Tensor(
            packed=np.concatenate([p.packed for p in parts]),
            scales=np.concatenate([p.scales for p in parts]),
            in_features=first.in_features,
        )
    if isinstance(first, Q4Tensor):
        return concat_rows(parts)
    return np.concatenate(parts)


def table_rows(table: Weight, start: int, stop: int) -> Weight:
    """Rows start..stop of a prepared table, in the same form (exact: every row has its blocks)."""
    if isinstance(table, SplitQ8Tensor):
        return SplitQ8Tensor(q4=table_rows(table.q4, start, stop), in_features=table.in_features)
    if isinstance(table, Q8Tensor):
        return Q8Tensor(table.packed[start:stop], table.scales[start:stop], table.in_features)
    if isinstance(table, Q4Tensor):
        return take_rows(table, np.arange(start, min(stop, table.shape[0])))
    return table[start:stop]
