"""Packed linears (q/k/v into one MatMulNBits, gate/up into another) compute what one matmul per
linear computes: exact GGUF Q4_1 blocks with their block mins, static LoRA on every linear or on
some, adapter banks on members of a pack, and every attention formulation."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import artifact
from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.onnx_graph import GraphOptions, StaticLora, build_graph
from ruvdllm_export.spec import LINEARS, linear_weight
from tests.export.graph_harness import feeds, run, session
from tests.export.test_onnx_graph_adapters import random_banks
from tests.fixtures.tiny_models import make_gguf_checkpoint

SEQ, SLOTS, RANK = 12, 3, 2


@pytest.fixture(scope="module")
def q4_1(tmp_path_factory):
    path = make_gguf_checkpoint(tmp_path_factory.mktemp("gguf") / "m.gguf", "llama", "Q4_1", tied=True)
    return load_checkpoint(path)


def static_lora(spec, weights, projs, rng, rank=3):
    lora = {}
    for layer in range(spec.num_layers):
        for proj in projs:
            out, in_ = weights[linear_weight(layer, proj)].shape
            a = (rng.standard_normal((rank, in_)) * 0.2).astype(np.float32)
            b = (rng.standard_normal((out, rank)) * 0.2).astype(np.float32)
            lora[linear_weight(layer, proj)] = StaticLora(a=a, b=b)
    return lora


@pytest.mark.parametrize("attention", ["gqa", "attention23", "matmul"])
@pytest.mark.parametrize("lora_on", [LINEARS, ("k_proj", "gate_proj")], ids=["lora-all", "lora-some"])
def test_packed_graph_equals_one_matmul_per_linear(q4_1, attention, lora_on):
    spec, weights = q4_1.spec, q4_1.weights
    rng = np.random.default_rng(3)
    lora = static_lora(spec, weights, lora_on, rng)
    targets = ("q_proj", "v_proj", "up_proj")  # banks on members of both packs
    banks = random_banks(spec, targets, rng)
    mix = rng.uniform(0, 1, (1, SEQ, SLOTS)).astype(np.float32)
    ids = rng.integers(0, spec.vocab_size, SEQ)
    block_ids = np.arange(SEQ) // 4
    outs = {}
    for packed in (True, False):
        options = GraphOptions(
            attention=attention,
            accuracy_level=0,
            pack_linears=packed,
            adapter_targets=targets,
            adapter_slots=SLOTS,
            adapter_rank=RANK,
        )
        model = build_graph(spec, weights, options, lora=lora)
        nbits = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
        assert nbits == (4 if packed else 7) * spec.num_layers + 1
        outs[packed] = run(
            session(model), feeds(spec, options, ids, block_ids, adapter_weights=mix, banks=banks)
        )
    for name in (artifact.TOPK_LOGITS, artifact.LOGSUMEXP, artifact.ENTROPY, artifact.QUERY):
        np.testing.assert_allclose(outs[True][name], outs[False][name], atol=2e-5, rtol=0, err_msg=name)
    np.testing.assert_array_equal(
        outs[True][artifact.TOPK_IDS][..., 0], outs[False][artifact.TOPK_IDS][..., 0]
    )
    for layer in range(spec.num_layers):
        for name in (artifact.present_key(layer), artifact.present_value(layer)):
            np.testing.assert_allclose(outs[True][name], outs[False][name], atol=2e-5, rtol=0, err_msg=name)


def test_zero_width_bank_is_the_base_model(q4_1):
    """Bank factors bound zero-width (no adapter loaded) give the graph without bank inputs."""
    spec, weights = q4_1.spec, q4_1.weights
    with_banks = GraphOptions(attention="gqa", accuracy_level=0, adapter_slots=SLOTS, adapter_rank=RANK)
    without = GraphOptions(attention="gqa", accuracy_level=0, adapter_slots=0)
    ids = np.random.default_rng(4).integers(0, spec.vocab_size, SEQ)
    empty = {}
    for target in with_banks.adapter_targets:
        in_, out = spec.linear_features()[target]
        empty[target] = (
            np.zeros((spec.num_layers, in_, 0), np.float32),
            np.zeros((spec.num_layers, 0, out), np.float32),
        )
    mix = np.ones((1, SEQ, SLOTS), np.float32)
    a = run(
        session(build_graph(spec, weights, with_banks)),
        feeds(spec, with_banks, ids, np.zeros(SEQ), adapter_weights=mix, banks=empty),
    )
    b = run(session(build_graph(spec, weights, without)), feeds(spec, without, ids, np.zeros(SEQ)))
    for name in (artifact.TOPK_LOGITS, artifact.TOPK_IDS, artifact.ENTROPY, artifact.QUERY):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("attention", ["attention23", "gqa"])
def test_q4_side_branches_equal_the_merged_float_model(q4_1, attention):
    """Exact Q4_1 blocks (block mins in the side branch) plus a static LoRA on every linear (its
    factors in the same branch), at accuracy level 0: transformers on the held weights with each
    LoRA merged in, W + B A."""
    from ruvdllm_export.export import merge_lora
    from ruvdllm_export.onnx_graph import graph_weights_as_float, prepare_weights
    from tests.export.test_onnx_graph import assert_matches_logits, hf_model, hf_outputs

    spec, weights = q4_1.spec, q4_1.weights
    rng = np.random.default_rng(5)
    lora = static_lora(spec, weights, LINEARS, rng)
    options = GraphOptions(attention=attention, accuracy_level=0, adapter_slots=0)
    held = graph_weights_as_float(prepare_weights(spec, weights, options))
    _, merged = merge_lora(spec, held, lora)
    ids = rng.integers(0, spec.vocab_size, SEQ)
    out = run(
        session(build_graph(spec, weights, options, lora=lora)), feeds(spec, options, ids, np.arange(SEQ))
    )
    logits, _ = hf_outputs(hf_model("llama", spec.tie_word_embeddings, merged), ids)
    assert_matches_logits(out, logits, options.top_k, atol=2e-4)
