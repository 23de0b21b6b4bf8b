"""Every attention formulation on onnxruntime-gpu's CUDA execution provider gives the CPU
provider's outputs on a q4 graph with a cache, block visibility and adapter slots (needs a GPU:
run with --run-gpu). It tells which formulations the `cuda` target can use."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from runtime import artifact
from ruvdllm_export.onnx_graph import GraphOptions, build_graph
from tests.export.graph_harness import feeds, presents, run, tiny_spec
from tests.export.test_onnx_graph_adapters import random_banks
from tests.fixtures.tiny_models import tiny_weights

pytestmark = pytest.mark.gpu

PAST, SEQ, SLOTS, RANK = 6, 8, 3, 2


def cuda_session(model) -> ort.InferenceSession:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.fail("onnxruntime has no CUDA execution provider: pip install onnxruntime-gpu")
    return ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])


def cpu_session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("attention", ["gqa", "mha", "attention23", "matmul"])
def test_cuda_matches_cpu_per_attention_formulation(attention):
    spec = tiny_spec("llama", False)
    weights = tiny_weights("llama", False, seed=31)
    options = GraphOptions(
        attention=attention,
        accuracy_level=0,
        adapter_targets=("q_proj", "v_proj"),
        adapter_slots=SLOTS,
        adapter_rank=RANK,
    )
    model = build_graph(spec, weights, options)
    rng = np.random.default_rng(6)
    prefix = rng.integers(0, spec.vocab_size, PAST)
    cpu = cpu_session(model)
    past = presents(spec, run(cpu, feeds(spec, options, prefix, np.arange(PAST))))
    chunk = feeds(
        spec,
        options,
        rng.integers(0, spec.vocab_size, SEQ),
        np.arange(SEQ) // 4,
        past=past,
        output_offset=1,
        adapter_weights=rng.uniform(0, 1, (1, SEQ, SLOTS)).astype(np.float32),
        banks=random_banks(spec, options.adapter_targets, rng),
    )
    want, got = run(cpu, chunk), run(cuda_session(model), chunk)
    for name in (artifact.TOPK_LOGITS, artifact.LOGSUMEXP, artifact.ENTROPY, artifact.QUERY):
        np.testing.assert_allclose(got[name], want[name], atol=2e-3, rtol=0, err_msg=name)
    assert (got[artifact.TOPK_IDS][..., 0] == want[artifact.TOPK_IDS][..., 0]).mean() >= 0.9
