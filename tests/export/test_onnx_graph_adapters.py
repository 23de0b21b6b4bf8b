"""Adapter-bank inputs (TALoRA / DGR slots, per position) and the static conversion LoRA."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import artifact
from ruvdllm_export.onnx_graph import GraphOptions, StaticLora, build_graph
from ruvdllm_export.spec import EMBED, LM_HEAD, linear_weight
from tests.export.graph_harness import feeds, run, session, tiny_spec
from tests.export.test_onnx_graph import SEQ, assert_matches_logits, hf_model, hf_outputs
from tests.fixtures.tiny_models import tiny_weights

torch = pytest.importorskip("torch")
reference = pytest.importorskip("ruvdllm_export.reference")

SLOTS, RANK = 3, 2


def random_banks(spec, targets, rng, scale=0.3):
    banks = {}
    for target in targets:
        in_, out = spec.linear_features()[target]
        a = rng.standard_normal((spec.num_layers, in_, SLOTS * RANK)) * scale / np.sqrt(in_)
        b = rng.standard_normal((spec.num_layers, SLOTS * RANK, out)) * scale
        banks[target] = (a.astype(np.float32), b.astype(np.float32))
    return banks


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("k_proj", "o_proj", "down_proj")])
def test_per_position_slot_mixture_matches_the_reference(targets):
    spec = tiny_spec("qwen2", False)
    weights = tiny_weights("qwen2", False, seed=21)
    options = GraphOptions(
        quantization="fp32",
        attention="matmul",
        adapter_targets=targets,
        adapter_slots=SLOTS,
        adapter_rank=RANK,
    )
    rng = np.random.default_rng(8)
    banks = random_banks(spec, targets, rng)
    mix = rng.uniform(0, 1, (1, SEQ, SLOTS)).astype(np.float32)
    mix[0, :3] = 0  # some positions use no adapter at all
    ids = rng.integers(0, spec.vocab_size, SEQ)
    block_ids = np.arange(SEQ) // 4
    out = run(
        session(build_graph(spec, weights, options)),
        feeds(spec, options, ids, block_ids, adapter_weights=mix, banks=banks),
    )
    model = reference.DiffusionLM(spec, weights, mask_token_id=0, top_k=options.top_k)
    with torch.no_grad():
        ref = model(
            torch.from_numpy(ids)[None],
            torch.arange(SEQ)[None],
            torch.from_numpy(block_ids)[None],
            adapter_weights=torch.from_numpy(mix),
            adapter_bank={t: (torch.from_numpy(a), torch.from_numpy(b)) for t, (a, b) in banks.items()},
        )
    for name in (artifact.TOPK_LOGITS, artifact.LOGSUMEXP, artifact.ENTROPY, artifact.QUERY):
        np.testing.assert_allclose(out[name], ref[name].numpy(), atol=5e-5, rtol=0, err_msg=name)
    base = run(session(build_graph(spec, weights, options)), feeds(spec, options, ids, block_ids))
    assert not np.allclose(base[artifact.LOGSUMEXP], out[artifact.LOGSUMEXP], atol=1e-3)  # the banks mattered


def test_zero_slot_weights_give_the_base_model_exactly():
    spec = tiny_spec("llama", True)
    weights = tiny_weights("llama", True, seed=22)
    with_banks = GraphOptions(quantization="q4", adapter_slots=SLOTS, adapter_rank=RANK)
    without = GraphOptions(quantization="q4", adapter_slots=0)
    ids = np.random.default_rng(9).integers(0, spec.vocab_size, SEQ)
    banks = random_banks(spec, with_banks.adapter_targets, np.random.default_rng(10))
    a = run(
        session(build_graph(spec, weights, with_banks)),
        feeds(spec, with_banks, ids, np.zeros(SEQ), banks=banks),
    )
    b = run(session(build_graph(spec, weights, without)), feeds(spec, without, ids, np.zeros(SEQ)))
    for name in (artifact.TOPK_LOGITS, artifact.TOPK_IDS, artifact.ENTROPY, artifact.QUERY):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize(
    "projs",
    [("q_proj", "down_proj"), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")],
    ids=["some", "all"],  # packed q/k/v, gate/up: deltas after the split, or concatenated before it
)
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_static_lora_equals_the_merged_float_weights(tied, projs):
    """The conversion adapter as a float side branch: W x + b (a x) == (W + b a) x, on linears, the
    head and the embedding (checked against transformers with the merged weights)."""
    spec = tiny_spec("llama", tied)
    weights = tiny_weights("llama", tied, seed=23)
    rng = np.random.default_rng(11)
    rank = 4
    lora, merged = {}, dict(weights)
    targets = [linear_weight(layer, p) for layer in range(spec.num_layers) for p in projs]
    for name in [*targets, LM_HEAD, EMBED]:
        if name == EMBED:
            out, in_ = spec.hidden_size, spec.vocab_size
        elif name == LM_HEAD:
            out, in_ = spec.vocab_size, spec.hidden_size
        else:
            out, in_ = weights[name].shape
        a = (rng.standard_normal((rank, in_)) * 0.2).astype(np.float32)
        b = (rng.standard_normal((out, rank)) * 0.2).astype(np.float32)
        lora[name] = StaticLora(a=a, b=b)
        delta = b @ a
        if name == EMBED:
            merged[EMBED] = weights[EMBED] + delta.T
        elif name == LM_HEAD:
            head = weights[EMBED] if tied else weights[LM_HEAD]
            merged[LM_HEAD] = head + delta
        else:
            merged[name] = weights[name] + delta
    options = GraphOptions(quantization="fp32", attention="matmul")
    ids = rng.integers(0, spec.vocab_size, SEQ)
    out = run(
        session(build_graph(spec, weights, options, lora=lora)), feeds(spec, options, ids, np.arange(SEQ))
    )
    # transformers with an untied head holds both merged tables
    logits, _ = hf_outputs(hf_model("llama", False, merged), ids)
    assert_matches_logits(out, logits, options.top_k, atol=1e-4)


def test_static_lora_of_the_wrong_shape_is_refused():
    spec = tiny_spec("llama", False)
    bad = {
        linear_weight(0, "q_proj"): StaticLora(
            a=np.zeros((2, 7), np.float32), b=np.zeros((64, 2), np.float32)
        )
    }
    with pytest.raises(ValueError, match="q_proj"):
        build_graph(spec, tiny_weights("llama", False, seed=0), GraphOptions(quantization="fp32"), lora=bad)
