"""The adapter switch: a graph with a static LoRA (the conversion adapter) takes adapter_gate
[1, S]; rows at 0 compute the base model exactly, rows at 1 the adapted model exactly, and a chunk
that mixes them (AR rows first, a drafter block after) equals running the two parts one after the
other over the cache — what the verified sampler relies on."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import artifact
from ruvdllm_export.onnx_graph import GraphOptions, StaticLora, build_graph
from tests.export.graph_harness import feeds, presents, run, session, tiny_spec
from tests.fixtures.tiny_models import random_conversion_adapter, tiny_weights

SEQ = 10
SMALL = ("topk_ids", "topk_logits", "logsumexp", "entropy", "query")


def conversion_adapter(spec) -> dict[str, StaticLora]:
    return {name: StaticLora(a=a, b=b) for name, (a, b) in random_conversion_adapter(spec).items()}


def gated(out: dict, gate) -> dict:
    return {**out, artifact.ADAPTER_GATE: np.asarray(gate, np.float32).reshape(1, -1)}


@pytest.fixture(params=[("llama", True), ("qwen3", False)], ids=["llama-tied", "qwen3"])
def graphs(request):
    arch, tied = request.param
    spec, weights = tiny_spec(arch, tied), tiny_weights(arch, tied, seed=31)
    options = GraphOptions(quantization="q4", accuracy_level=0, adapter_slots=2, adapter_rank=2)
    lora = conversion_adapter(spec)
    return (
        spec,
        options,
        {
            "switched": session(build_graph(spec, weights, options, lora=lora)),
            "fixed": session(
                build_graph(
                    spec, weights, GraphOptions(**{**options.__dict__, "adapter_switch": False}), lora=lora
                )
            ),
            "base": session(build_graph(spec, weights, options)),
        },
    )


def test_gate_zero_is_the_base_model_and_gate_one_the_adapted(graphs):
    spec, options, sessions = graphs
    ids = np.random.default_rng(1).integers(0, spec.vocab_size, SEQ)
    feed = feeds(spec, options, ids, np.arange(SEQ) // 3)
    base = run(sessions["base"], feed)
    fixed = run(sessions["fixed"], feed)
    off = run(sessions["switched"], gated(feed, np.zeros(SEQ)))
    on = run(sessions["switched"], gated(feed, np.ones(SEQ)))
    for name in SMALL:
        np.testing.assert_array_equal(off[name], base[name], err_msg=name)
        np.testing.assert_allclose(on[name], fixed[name], atol=1e-6, rtol=0, err_msg=name)
    assert not np.allclose(on[artifact.LOGSUMEXP], off[artifact.LOGSUMEXP], atol=1e-3)  # the adapter mattered


def test_ar_rows_then_a_drafter_block_equal_the_two_parts_in_turn(graphs):
    """[prefix: gate 0, causal] + [block: gate 1, one block id] in one forward == the prefix alone
    (gate 0), then the block over its cached keys/values (gate 1)."""
    spec, options, sessions = graphs
    sess = sessions["switched"]
    rng = np.random.default_rng(2)
    prefix, block = rng.integers(0, spec.vocab_size, 6), rng.integers(0, spec.vocab_size, 4)
    both = np.concatenate([prefix, block])
    block_ids = np.concatenate([np.arange(6), np.full(4, 6)])
    fused = run(sess, gated(feeds(spec, options, both, block_ids, output_offset=3), [0] * 6 + [1] * 4))
    first = run(sess, gated(feeds(spec, options, prefix, np.arange(6), output_offset=3), np.zeros(6)))
    second = run(
        sess,
        gated(
            feeds(
                spec, options, block, np.zeros(4), position_ids=np.arange(6, 10), past=presents(spec, first)
            ),
            np.ones(4),
        ),
    )
    for name in SMALL:
        joined = np.concatenate([first[name], second[name]], axis=1)
        np.testing.assert_allclose(fused[name], joined, atol=2e-5, rtol=0, err_msg=name)
    for (k, v), (k2, v2) in zip(presents(spec, fused), presents(spec, second), strict=True):
        np.testing.assert_allclose(k, k2, atol=2e-5, rtol=0)
        np.testing.assert_allclose(v, v2, atol=2e-5, rtol=0)


def test_the_gate_input_exists_only_for_a_switchable_static_lora():
    spec, weights = tiny_spec("llama", False), tiny_weights("llama", False, seed=2)
    lora = conversion_adapter(spec)

    def inputs(options, with_lora):
        return {
            i.name for i in build_graph(spec, weights, options, lora=lora if with_lora else None).graph.input
        }

    assert artifact.ADAPTER_GATE in inputs(GraphOptions(), True)
    assert artifact.ADAPTER_GATE not in inputs(GraphOptions(), False)
    assert artifact.ADAPTER_GATE not in inputs(GraphOptions(adapter_switch=False), True)
