"""Block visibility, the KV cache and the three attention formulations, against the torch reference
model (which implements the same rule with an explicit boolean mask)."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import artifact
from ruvdllm_export.onnx_graph import GraphOptions, build_graph
from tests.export.graph_harness import feeds, presents, run, session, tiny_spec
from tests.fixtures.tiny_models import tiny_weights

torch = pytest.importorskip("torch")
reference = pytest.importorskip("ruvdllm_export.reference")

FORMULATIONS = ["gqa", "mha", "attention23", "matmul"]
PAST, SEQ = 5, 8
BLOCK_PATTERNS = {
    "bidirectional": np.zeros(SEQ, np.int64),
    "block-causal": np.arange(SEQ) // 3,
    "causal": np.arange(SEQ),
    "unordered": np.array([2, 0, 1, 2, 0, 1, 1, 0]),  # the rule holds for any ids, not only sorted ones
}


def reference_run(model, ids, block_ids, past=None, offset=0, **kwargs):
    p = 0 if past is None else past[0][0].shape[2]
    with torch.no_grad():
        out = model(
            torch.from_numpy(ids)[None],
            torch.arange(p, p + len(ids))[None],
            torch.from_numpy(np.asarray(block_ids))[None],
            output_offset=offset,
            past=None if past is None else [(torch.from_numpy(k), torch.from_numpy(v)) for k, v in past],
            **kwargs,
        )
    return {name: value.numpy() for name, value in out.items()}


def assert_outputs_close(out, ref, spec, atol):
    for name in (artifact.TOPK_LOGITS, artifact.LOGSUMEXP, artifact.ENTROPY, artifact.QUERY):
        np.testing.assert_allclose(out[name], ref[name], atol=atol, rtol=0, err_msg=name)
    assert (out[artifact.TOPK_IDS][..., 0] == ref[artifact.TOPK_IDS][..., 0]).all()
    for layer in range(spec.num_layers):
        for name in (artifact.present_key(layer), artifact.present_value(layer)):
            np.testing.assert_allclose(out[name], ref[name], atol=atol, rtol=0, err_msg=name)


@pytest.fixture(scope="module")
def qwen3():
    spec = tiny_spec("qwen3", True)
    weights = tiny_weights("qwen3", True, seed=11)
    return spec, weights, reference.DiffusionLM(spec, weights, mask_token_id=3, top_k=8)


@pytest.mark.parametrize("pattern", list(BLOCK_PATTERNS))
@pytest.mark.parametrize("attention", FORMULATIONS)
def test_visibility_with_a_cache_matches_the_reference(qwen3, attention, pattern):
    spec, weights, ref_model = qwen3
    options = GraphOptions(quantization="fp32", attention=attention, top_k=8, adapter_slots=0)
    rng = np.random.default_rng(5)
    prefix = rng.integers(0, spec.vocab_size, PAST)
    ids = rng.integers(0, spec.vocab_size, SEQ)
    past = presents(spec, reference_run(ref_model, prefix, np.arange(PAST)))
    block_ids = BLOCK_PATTERNS[pattern]
    out = run(
        session(build_graph(spec, weights, options)),
        feeds(spec, options, ids, block_ids, past=past, output_offset=2),
    )
    assert_outputs_close(out, reference_run(ref_model, ids, block_ids, past, offset=2), spec, atol=5e-5)


@pytest.mark.parametrize("attention", FORMULATIONS)
def test_committing_blocks_through_the_cache_equals_one_block_causal_pass(attention):
    """BD3LM's use of the cache: blocks fed one at a time with the previous presents as past give
    the rows of a single block-causal pass over the whole sequence."""
    spec = tiny_spec("llama", False)
    options = GraphOptions(quantization="q4", attention=attention, accuracy_level=0, adapter_slots=0)
    sess = session(build_graph(spec, tiny_weights("llama", False, seed=12), options))
    block, n_blocks = 4, 3
    ids = np.random.default_rng(6).integers(0, spec.vocab_size, block * n_blocks)
    whole = run(sess, feeds(spec, options, ids, np.arange(len(ids)) // block))
    past = None
    for b in range(n_blocks):
        chunk = slice(b * block, (b + 1) * block)
        out = run(sess, feeds(spec, options, ids[chunk], np.zeros(block, np.int64), past=past))
        np.testing.assert_allclose(
            out[artifact.TOPK_LOGITS][0], whole[artifact.TOPK_LOGITS][0, chunk], atol=2e-5
        )
        np.testing.assert_allclose(out[artifact.ENTROPY][0], whole[artifact.ENTROPY][0, chunk], atol=2e-5)
        past = presents(spec, out)
    np.testing.assert_allclose(past[1][0], whole[artifact.present_key(1)], atol=2e-5)


def test_formulations_agree_on_the_q4_graph():
    spec = tiny_spec("qwen2", False)
    weights = tiny_weights("qwen2", False, seed=13)
    ids = np.random.default_rng(7).integers(0, spec.vocab_size, 20)  # >= 16: where WebGPU MHA broke
    block_ids = np.arange(20) // 4
    results = {}
    for attention in FORMULATIONS:
        options = GraphOptions(quantization="q4", attention=attention, accuracy_level=0)
        results[attention] = run(
            session(build_graph(spec, weights, options)), feeds(spec, options, ids, block_ids)
        )
    for attention in ("mha", "attention23"):
        for name in (artifact.TOPK_LOGITS, artifact.ENTROPY, artifact.QUERY, artifact.present_value(1)):
            np.testing.assert_allclose(
                results[attention][name], results["matmul"][name], atol=2e-5, err_msg=name
            )
