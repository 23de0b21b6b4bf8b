"""The export's memory mechanisms, measured on synthetic models in fresh processes (Linux: the
kernel's peak resident set, VmHWM, restarted before the step measured).

- The graph build streams every weight into the external data file: what it holds does not grow
  with the bytes written (it did: protobuf's upb arenas kept each cleared raw_data, so a 1B
  model's graph phase held its whole packed model).
- PhaseMemory reports each phase's own peak, so a phase that allocates little after one that
  allocated much shows its own figure, and the export's peak is the largest phase's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ruvdllm_export.memory import PhaseMemory, reset_peak

ROOT = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not reset_peak(), reason="needs /proc/self/clear_refs (Linux)")

# 16 layers of hidden 1024 / MLP 4096, prepared as 4-bit blocks generated on access (no
# quantization to wait for): ~9 MB packed per layer, ~140 MB written in all.
GRAPH_CHILD = """
import json, sys
from dataclasses import replace
from collections.abc import Mapping
import numpy as np
from ruvdllm_export.memory import peak_rss_mb, reset_peak, rss_mb
from ruvdllm_export.onnx_graph import GraphOptions, build_graph
from ruvdllm_export.quant.q4 import BLOCK, Q4Tensor
from ruvdllm_export.spec import expected_shapes
from tests.fixtures.tiny_models import tiny_spec

spec = replace(tiny_spec("llama", True), hidden_size=1024, intermediate_size=4096, num_layers=16,
               num_heads=16, num_kv_heads=4, head_dim=64, vocab_size=1024)
options = GraphOptions()

class Generated(Mapping):
    # prepared forms made on access, as onnx_graph/spill.py's SpilledWeights reads them back
    prepared_for = options
    shapes = expected_shapes(spec)
    def __getitem__(self, name):
        shape = self.shapes[name]
        if len(shape) == 1:
            return np.ones(shape, np.float32)
        rows, blocks = shape[0], -(-shape[1] // BLOCK)
        return Q4Tensor(np.full((rows, blocks, 16), 0x5A, np.uint8), np.full((rows, blocks), 0.01, np.float32),
                        np.full((rows, (blocks + 1) // 2), 0x88, np.uint8), None, shape[1])
    def __iter__(self):
        return iter(self.shapes)
    def __len__(self):
        return len(self.shapes)

out = sys.argv[1]
before = rss_mb()
reset_peak()
model = build_graph(spec, Generated(), options, external_data=out + "/model.onnx.data")
print(json.dumps({"before": before, "peak": peak_rss_mb(), "after": rss_mb()}))
"""


@linux_only
def test_building_a_graph_holds_no_more_as_it_writes_more(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", GRAPH_CHILD, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    memory = json.loads(done.stdout)
    written = (tmp_path / "model.onnx.data").stat().st_size / 2**20
    assert written > 120  # the layers really were written
    grown = memory["peak"] - memory["before"]
    # one layer's tensors at a time: a few MiB; keeping each written tensor would be >= `written`
    assert grown < 0.25 * written, (grown, written, memory)


@linux_only
def test_each_phase_reports_its_own_peak():
    memory = PhaseMemory()
    big = bytearray(200 * 2**20)  # touched: resident
    del big
    memory.mark("first")
    small = bytearray(20 * 2**20)
    memory.mark("second.step")
    del small
    memory.mark("second")
    report = memory.report()
    first, second = report["phases"]["first"]["peak_rss_mib"], report["phases"]["second"]["peak_rss_mib"]
    assert report["peaks"] == "per phase"
    assert first - second > 150  # the second phase does not inherit the first one's peak
    assert report["phases"]["second.step"]["peak_rss_mib"] <= second  # the parent folds its steps in
    assert report["peak_rss_mib"] == max(first, second)


def test_a_paragraph_run_in_row_parts_gives_the_one_forward_outputs(monkeypatch):
    """validate.py's paragraph in parts (the head sees a bounded number of rows per forward, each
    part over the cache its runner returned for the parts before it): the joined rows and the
    last part's cache equal one forward over all the ids, on onnxruntime and on the streamed
    reference alike."""
    import numpy as np

    from ruvdllm_export import validate
    from ruvdllm_export.onnx_graph import GraphOptions, build_graph, prepare_weights
    from tests.fixtures.tiny_models import tiny_spec, tiny_weights

    spec = tiny_spec("llama", True)
    options = GraphOptions(adapter_slots=2, adapter_rank=2)
    held = prepare_weights(spec, tiny_weights("llama", True, seed=5), options)
    session = validate._session(build_graph(spec, held, options).SerializeToString())
    ids = np.random.default_rng(0).integers(0, spec.vocab_size, 40)
    whole = validate.paragraph_feeds(spec, options, ids)
    assert not isinstance(whole, validate.Parts)  # 40 x 384 logits: one forward
    monkeypatch.setattr(validate, "HEAD_LOGITS_PER_RUN", 16 * spec.vocab_size)
    parts = validate.paragraph_feeds(spec, options, ids)
    assert parts.bounds() == [(0, 16), (16, 32), (32, 40)]  # each token run once
    runs = {
        "onnxruntime": lambda feeds: validate._run(session, feeds),
        "reference": validate.torch_reference(spec, held, options.top_k),
    }
    for kind, run in runs.items():
        one, joined = validate.run_case(run, whole), validate.run_case(run, parts)
        assert joined.keys() == one.keys()
        for name, value in one.items():
            assert joined[name].shape == value.shape, (kind, name)
            np.testing.assert_allclose(joined[name], value, rtol=1e-4, atol=1e-5, err_msg=f"{kind} {name}")
        assert np.array_equal(joined["topk_ids"][..., 0], one["topk_ids"][..., 0]), kind
