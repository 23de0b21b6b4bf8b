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
Its slices are spilled as they are made and never concatenated in memory: `rows(name, start,
stop)` reads only the slices a range touches (the streamed reference's head and embedding), and
the whole table is assembled slice by slice into arrays of its final size (the graph build):
one copy of the packed table, not the slices' list beside their concatenation plus a pickle of
it (2.6x the table, measured on Llama 3's 128k x 2k table). The scratch file is this process's
own, written and read by it, and removed by `close()`.
"""

from __future__ import annotations

import dataclasses
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
        self._slices: dict[str, list[tuple[int, int, int, int]]] = {}  # rows first, last; offset, length
        self._last_slice: tuple[tuple[str, int] | None, Weight | None] = (None, None)
        self._file = open(self.path, "w+b")  # noqa: SIM115 (closed by close())

    def put(self, name: str, value: Weight) -> None:
        self._where[name] = self._append(value)
        self.shapes[name] = tuple(int(d) for d in value.shape)

    def put_rows(self, name: str, parts: Iterator[Weight]) -> None:
        """One table from its row slices (all of one form), each spilled as it comes."""
        slices, rows = [], 0
        for part in parts:
            slices.append((rows, rows + part.shape[0], *self._append(part)))
            rows, width = rows + part.shape[0], part.shape[1]
            del part  # before the next slice is made
        self._slices[name] = slices
        self._where[name] = (-1, 0)
        self.shapes[name] = (rows, int(width))

    def _append(self, value: Weight) -> tuple[int, int]:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.seek(0, os.SEEK_END)
        where = (self._file.tell(), len(data))
        self._file.write(data)
        return where

    def _read(self, offset: int, length: int) -> Weight:
        self._file.flush()
        return pickle.loads(os.pread(self._file.fileno(), length, offset))

    def __getitem__(self, name: str) -> Weight:
        if name in self._slices:
            return _assembled(
                (self._read(offset, length) for _, _, offset, length in self._slices[name]),
                self.shapes[name][0],
            )
        return self._read(*self._where[name])

    def reads_rows(self, name: str) -> bool:
        """True for a table spilled by row slices: `rows` reads only the slices it needs."""
        return name in self._slices

    def rows(self, name: str, start: int, stop: int) -> Weight:
        """Rows start..stop of a table spilled by slices, in its prepared form. The last slice
        read is kept: consecutive single rows (the embedding's sorted ids) read each slice once."""
        parts = []
        for first, last, offset, length in self._slices[name]:
            if first < stop and start < last:
                if self._last_slice[0] != (name, offset):
                    self._last_slice = ((name, offset), None)  # the old slice goes before the read
                    self._last_slice = ((name, offset), self._read(offset, length))
                parts.append(
                    table_rows(self._last_slice[1], max(start, first) - first, min(stop, last) - first)
                )
        return parts[0] if len(parts) == 1 else concat_table_rows(parts)

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
        self._slices.clear()
        self._last_slice = (None, None)


def prepared_one_at_a_time(
    spec: ModelSpec, weights: Mapping[str, Weight], options: GraphOptions
) -> Iterator[tuple[str, Weight]]:
    """(name, prepare_weights' form of it), one tensor read at a time; a table the checkpoint
    reads by rows is prepared by rows."""
    for name, value in _prepared_or_slices(spec, weights, options):
        yield name, (concat_table_rows(list(value)) if isinstance(value, Iterator) else value)


def _prepared_or_slices(
    spec: ModelSpec, weights: Mapping[str, Weight], options: GraphOptions
) -> Iterator[tuple[str, Weight | Iterator[Weight]]]:
    """As prepared_one_at_a_time, but a table read by rows comes as an iterator of its slices."""
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
        for name, value in _prepared_or_slices(spec, weights, options):
            if isinstance(value, Iterator):
                spilled.put_rows(name, value)
            else:
                spilled.put(name, value)
            del value  # before the next tensor is read
    except BaseException:
        spilled.close()
        raise
    return spilled


def _is_table(spec: ModelSpec, name: str, options: GraphOptions) -> bool:
    tables = {EMBED} | ({LM_HEAD} if not spec.tie_word_embeddings else set())
    return options.quantization != "fp32" and name in tables


def _table_by_rows(weights, name: str, options: GraphOptions) -> Iterator[Weight]:
    """The table's prepared form slice by slice (rows quantize independently: the slices
    together equal preparing it whole, tested)."""
    rows = weight_shape(weights, name)[0]
    for start in range(0, rows, ROWS_PER_CHUNK):
        yield _as_table(
            weights.rows(name, start, start + ROWS_PER_CHUNK),
            options.table_bits,
            options.quantization == "q4" and options.accuracy_level != 4,
        )


def _assembled(parts: Iterator[Weight], rows: int) -> Weight:
    """Row slices of one prepared form stacked into arrays allocated once at the full size (no
    list of slices beside a concatenation of them): what concat_table_rows returns."""
    out, filled = None, 0
    for part in parts:
        n = part.shape[0]
        if out is None:
            out = _map_arrays(part, lambda a: np.empty((rows, *a.shape[1:]), a.dtype))
        _copy_rows(out, part, filled)
        filled += n
    return out


def _map_arrays(form, make):
    if isinstance(form, np.ndarray):
        return make(form)
    changes = {
        f.name: _map_arrays(getattr(form, f.name), make)
        for f in dataclasses.fields(form)
        if isinstance(getattr(form, f.name), np.ndarray) or dataclasses.is_dataclass(getattr(form, f.name))
    }
    return dataclasses.replace(form, **changes)


def _copy_rows(out, part, at: int) -> None:
    if isinstance(part, np.ndarray):
        out[at : at + part.shape[0]] = part
        return
    for f in dataclasses.fields(part):
        value = getattr(part, f.name)
        if isinstance(value, np.ndarray) or dataclasses.is_dataclass(value):
            _copy_rows(getattr(out, f.name), value, at)


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
