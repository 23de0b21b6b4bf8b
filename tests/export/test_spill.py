"""onnx_graph/spill.py: the prepared weights written one at a time and read back equal what
prepare_weights holds in memory; a table read by rows is prepared to the same bytes; the graph
built from the spilled mapping is the same graph; the streamed reference's sliced table (large
vocabularies) computes what the whole table computes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ruvdllm_export.checkpoints.lazy import LazyWeights
from ruvdllm_export.onnx_graph import GraphOptions, StaticLora, build_graph, prepare_weights
from ruvdllm_export.onnx_graph import spill as spill_module
from ruvdllm_export.onnx_graph.spill import spill_prepared, table_rows
from ruvdllm_export.spec import EMBED, LM_HEAD, linear_weight
from ruvdllm_export.validate import graph_feeds
from tests.fixtures.tiny_models import tiny_spec, tiny_weights


def lazy_with_rows(weights: dict) -> LazyWeights:
    """A checkpoint that reads tensors, and rows of them, on access (as the safetensors reader)."""
    return LazyWeights(
        {n: (lambda w=w: w.copy()) for n, w in weights.items()},
        {n: w.shape for n, w in weights.items()},
        {n: (lambda start, stop, w=w: w[start:stop].copy()) for n, w in weights.items() if w.ndim == 2},
    )


def same(a, b) -> bool:
    """Equal prepared forms: the same dataclass with equal arrays (dtype included)."""
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(
            same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    return a == b


@pytest.mark.parametrize(
    "options",
    [
        GraphOptions(),
        GraphOptions(accuracy_level=4),
        GraphOptions(table_bits=4),
        GraphOptions(quantization="fp32"),
    ],
    ids=["split-q8-table", "q8-table", "q4-table", "fp32"],
)
@pytest.mark.parametrize("tied", [True, False])
def test_spilled_equals_prepared_and_builds_the_same_graph(tmp_path, monkeypatch, options, tied):
    monkeypatch.setattr(spill_module, "ROWS_PER_CHUNK", 100)  # the 384-row table in 4 slices
    spec = tiny_spec("llama", tied)
    weights = tiny_weights("llama", tied, seed=3)
    expected = prepare_weights(spec, weights, options)
    spilled = spill_prepared(spec, lazy_with_rows(weights), options, tmp_path / "scratch")
    assert set(spilled) == set(expected)
    for name, value in expected.items():
        assert same(spilled[name], value), name
        assert spilled.shapes[name] == tuple(value.shape)
    table = EMBED if options.quantization != "fp32" else None
    if table:  # spilled as 4 slices of 100 rows: any range reads across them, in the same form
        assert spilled.reads_rows(table) and not spilled.reads_rows(linear_weight(0, "q_proj"))
        for start, stop in ((0, 384), (90, 210), (100, 200), (383, 384), (5, 6)):
            assert same(spilled.rows(table, start, stop), table_rows(expected[table], start, stop))
    lora = {
        linear_weight(1, "q_proj"): StaticLora(a=np.ones((2, 64), np.float32), b=np.ones((64, 2), np.float32))
    }
    whole = build_graph(spec, expected, options, lora=lora).SerializeToString()
    assert build_graph(spec, spilled, options, lora=lora).SerializeToString() == whole
    spilled.close()
    assert not (tmp_path / "scratch").exists()


torch = pytest.importorskip("torch")

from ruvdllm_export.reference import streamed as streamed_module  # noqa: E402
from ruvdllm_export.reference.streamed import StreamedReference  # noqa: E402


@pytest.mark.parametrize("packed", [True, False], ids=["packed-table", "float-rows"])
def test_sliced_table_reference_equals_the_whole_table(tmp_path, monkeypatch, packed):
    """Embedding rows gathered and the head run over vocabulary slices (a 128k table is never
    widened whole) give the whole-table reference's outputs, LoRA on both included."""
    spec = tiny_spec("llama", True)
    weights = tiny_weights("llama", True, seed=4)
    options = GraphOptions(adapter_slots=2, adapter_rank=2)
    rng = np.random.default_rng(1)
    lora = {
        EMBED: StaticLora(
            a=rng.standard_normal((3, 384)).astype(np.float32),
            b=rng.standard_normal((64, 3)).astype(np.float32) * 0.1,
        ),
        LM_HEAD: StaticLora(
            a=rng.standard_normal((3, 64)).astype(np.float32) * 0.1,
            b=rng.standard_normal((384, 3)).astype(np.float32),
        ),
    }
    monkeypatch.setattr(spill_module, "ROWS_PER_CHUNK", 100)  # a packed table spilled in 4 slices
    held = (
        spill_prepared(spec, lazy_with_rows(weights), options, tmp_path / "s")
        if packed
        else lazy_with_rows(weights)
    )
    feeds = graph_feeds(
        spec, options, rng.integers(0, spec.vocab_size, 20), np.arange(20) // 4, output_offset=2
    )
    whole = StreamedReference(spec, held, top_k=5, lora=lora)(feeds)
    monkeypatch.setattr(streamed_module, "TABLE_SLICE_ROWS", 64)
    monkeypatch.setattr(streamed_module, "HEAD_SLICE_ROWS", 70)  # slices across the spilled ones
    sliced = StreamedReference(spec, held, top_k=5, lora=lora)(feeds)
    assert sliced.keys() == whole.keys()
    for name, value in whole.items():
        np.testing.assert_allclose(sliced[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    assert np.array_equal(sliced["topk_ids"], whole["topk_ids"])


def test_split_table_widens_by_rows_to_the_same_values(monkeypatch):
    """dequantize_split_q8 by row chunks (no table-sized temporaries) equals widening the whole
    table at once."""
    from ruvdllm_export.onnx_graph import q8

    table = np.random.default_rng(2).standard_normal((100, 72)).astype(np.float32)
    split = q8.split_q8(q8.quantize_q8(table))
    whole = q8.dequantize_q4(split.q4)
    half = whole.shape[1] // 2
    monkeypatch.setattr(q8, "ROWS_PER_CHUNK", 7)
    np.testing.assert_array_equal(q8.dequantize_split_q8(split), (whole[:, :half] + whole[:, half:])[:, :72])
