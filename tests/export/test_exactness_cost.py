"""benchmarks/exactness_cost.py's graph surgery on a tiny Q4_1 GGUF export (block minimums, a Q8_0
table): without the minimum branches no Add reads a MatMulNBits and nothing unread is left; the
4-bit head replaces the 8-bit one; every copy opens, runs, and the copies compute another model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from runtime import artifact
from runtime.backend import Chunk
from runtime.cpython_model import open_model
from runtime.ort_backend import OrtOptions
from ruvdllm_export.export import export_model
from tests.fixtures.scripts import BENCHMARKS, load_script
from tests.fixtures.tiny_models import make_gguf_checkpoint


@pytest.fixture(scope="module")
def exactness_cost():
    return load_script(BENCHMARKS / "exactness_cost.py")


@pytest.fixture(scope="module")
def q4_1_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("exactness")
    gguf = make_gguf_checkpoint(root / "tiny.gguf", qtype="Q4_1", tied=True, embed_qtype="Q8_0")
    return export_model(gguf, root / "model", validate=False, adapter_slots=0, log=None)


def top_logits(directory: Path) -> np.ndarray:
    model = open_model(directory, options=OrtOptions(intra_op_threads=1), verify="sizes")
    ids = [5, 17, 42, 99, 7]
    rows = Chunk(
        input_ids=ids,
        position_ids=list(range(len(ids))),
        block_ids=list(range(len(ids))),
        output_offset=0,
        adapter_weights=[[] for _ in ids],
    )
    return np.asarray(model.backend.forward(rows).topk_logits)


def nbits_widths(model: onnx.ModelProto) -> list[int]:
    """The `bits` of every MatMulNBits."""
    return [
        a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "bits"
    ]


def test_each_copy_runs_without_what_it_drops(exactness_cost, q4_1_model, tmp_path):
    graph = artifact.GRAPH_NAME
    shipped = onnx.load(str(q4_1_model / graph), load_external_data=False)
    assert sorted(set(nbits_widths(shipped))) == [4, 8]  # 4-bit linears, the Q8_0 table's head
    assert any("mins" in t.name for t in shipped.graph.initializer)

    copies = {
        (minimums, head_8bit): exactness_cost.variant(
            q4_1_model, tmp_path / f"{minimums}-{head_8bit}", minimums, head_8bit, graph
        )
        for minimums, head_8bit in ((False, True), (True, False), (False, False))
    }
    reference = top_logits(q4_1_model)
    for (minimums, head_8bit), directory in copies.items():
        model = onnx.load(str(directory / graph), load_external_data=False)
        nbits = {o for n in model.graph.node if n.op_type == "MatMulNBits" for o in n.output}
        bits = {
            a.i
            for n in model.graph.node
            if n.op_type == "MatMulNBits"
            for a in n.attribute
            if a.name == "bits"
        }
        if not minimums:
            assert not [n for n in model.graph.node if n.op_type == "Add" and set(n.input) & nbits]
            read = {i for n in model.graph.node for i in n.input}
            assert all(t.name in read for t in model.graph.initializer)
            assert not any("mins" in t.name for t in model.graph.initializer)
        assert (8 in bits) == head_8bit
        logits = top_logits(directory)  # opens against the new manifest, and runs
        assert logits.shape == reference.shape and not np.allclose(logits, reference)
