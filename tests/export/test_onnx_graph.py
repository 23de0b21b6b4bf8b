"""The fp32 graph against transformers' own LLaMA / Qwen2 / Qwen3 (tied and untied heads).

With causal block_ids (arange) the diffusion graph must compute exactly the AR model's logits:
this checks RoPE, GQA, norms, biases, q/k norms and the head outputs independently of our torch
reference model.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from runtime import artifact
from ruvdllm_export.onnx_graph import GraphOptions, build_graph
from tests.export.graph_harness import feeds, run, session, summary_from_logits, tiny_spec
from tests.fixtures.tiny_models import ARCHS, TINY, _hf_config, tiny_weights

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SEQ = 12


def hf_model(arch: str, tied: bool, weights: dict[str, np.ndarray]):
    model = getattr(transformers, ARCHS[arch].hf_class)(_hf_config(arch, tied, TINY))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=not tied)
    if tied:
        model.tie_weights()
    return model.eval()


def hf_outputs(model, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full logits [S, V] and the final-normed hidden state [S, d]."""
    with torch.no_grad():
        out = model(torch.from_numpy(ids)[None], output_hidden_states=True)
    return out.logits[0].numpy(), out.hidden_states[-1][0].numpy()


def assert_matches_logits(out: dict, logits: np.ndarray, top_k: int, atol: float) -> None:
    ref = summary_from_logits(logits, top_k)
    np.testing.assert_allclose(out[artifact.TOPK_LOGITS][0], ref["topk_logits"], atol=atol, rtol=0)
    np.testing.assert_allclose(out[artifact.LOGSUMEXP][0], ref["logsumexp"], atol=atol, rtol=0)
    np.testing.assert_allclose(out[artifact.ENTROPY][0], ref["entropy"], atol=atol, rtol=0)
    # ids: the graph's candidates carry the reference logits they claim (robust to near-ties)
    claimed = np.take_along_axis(logits, out[artifact.TOPK_IDS][0], -1)
    np.testing.assert_allclose(claimed, out[artifact.TOPK_LOGITS][0], atol=atol, rtol=0)
    assert (out[artifact.TOPK_IDS][0][:, 0] == ref["topk_ids"][:, 0]).mean() == 1.0


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_fp32_graph_matches_transformers_causal(arch, tied):
    weights = tiny_weights(arch, tied, seed=3)
    spec = tiny_spec(arch, tied)
    options = GraphOptions(quantization="fp32", attention="matmul")
    model = build_graph(spec, weights, options)
    onnx.checker.check_model(model)
    ids = np.random.default_rng(0).integers(0, spec.vocab_size, SEQ)
    out = run(session(model), feeds(spec, options, ids, np.arange(SEQ)))
    logits, hidden = hf_outputs(hf_model(arch, tied, weights), ids)
    assert_matches_logits(out, logits, options.top_k, atol=5e-5)
    expected_query = hidden / np.linalg.norm(hidden, axis=-1, keepdims=True)
    np.testing.assert_allclose(out[artifact.QUERY][0], expected_query, atol=1e-5)


@pytest.mark.parametrize("attention", ["mha", "attention23", "matmul"])
def test_every_attention_formulation_matches_transformers(attention):
    weights = tiny_weights("qwen2", False, seed=4)
    spec = tiny_spec("qwen2", False)
    options = GraphOptions(quantization="fp32", attention=attention)
    model = build_graph(spec, weights, options)
    onnx.checker.check_model(model)
    ids = np.random.default_rng(1).integers(0, spec.vocab_size, SEQ)
    out = run(session(model), feeds(spec, options, ids, np.arange(SEQ)))
    logits, _ = hf_outputs(hf_model("qwen2", False, weights), ids)
    assert_matches_logits(out, logits, options.top_k, atol=5e-5)


def test_output_offset_keeps_only_the_last_rows():
    weights = tiny_weights("llama", True, seed=5)
    spec = tiny_spec("llama", True)
    options = GraphOptions(quantization="fp32", attention="matmul", top_k=5)
    sess = session(build_graph(spec, weights, options))
    ids = np.random.default_rng(2).integers(0, spec.vocab_size, SEQ)
    full = run(sess, feeds(spec, options, ids, np.arange(SEQ)))
    tail = run(sess, feeds(spec, options, ids, np.arange(SEQ), output_offset=SEQ - 3))
    assert tail[artifact.TOPK_IDS].shape == (1, 3, 5)
    assert tail[artifact.QUERY].shape == (1, 3, spec.hidden_size)
    for name in (artifact.TOPK_LOGITS, artifact.LOGSUMEXP, artifact.ENTROPY, artifact.QUERY):
        np.testing.assert_allclose(tail[name][0], full[name][0][-3:], atol=1e-6)
    # the cache covers every row whatever the offset
    np.testing.assert_array_equal(tail[artifact.present_key(1)], full[artifact.present_key(1)])


def test_graph_io_follows_the_artifact_contract():
    spec = tiny_spec("llama", False)
    options = GraphOptions(quantization="fp32")
    model = build_graph(spec, tiny_weights("llama", False, seed=0), options)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    expected_inputs = [artifact.INPUT_IDS, artifact.POSITION_IDS, artifact.BLOCK_IDS, artifact.OUTPUT_OFFSET]
    for layer in range(spec.num_layers):
        expected_inputs += [artifact.past_key(layer), artifact.past_value(layer)]
    expected_inputs.append(artifact.ADAPTER_WEIGHTS)
    for target in options.adapter_targets:
        expected_inputs += [artifact.adapter_a(target), artifact.adapter_b(target)]
    assert sorted(inputs) == sorted(expected_inputs)
    expected_outputs = {
        artifact.TOPK_IDS,
        artifact.TOPK_LOGITS,
        artifact.LOGSUMEXP,
        artifact.ENTROPY,
        artifact.QUERY,
    }
    for layer in range(spec.num_layers):
        expected_outputs |= {artifact.present_key(layer), artifact.present_value(layer)}
    assert set(outputs) == expected_outputs
    names = [node.name for node in model.graph.node]
    assert len(names) == len(set(names))
    assert all(name.startswith("/model/") for name in names)
    assert "/model/layers.1/attn/qkv_proj/MatMul" in names  # q/k/v packed into one matmul


def test_no_adapter_inputs_when_slots_is_zero():
    spec = tiny_spec("llama", False)
    model = build_graph(
        spec, tiny_weights("llama", False, seed=0), GraphOptions(quantization="fp32", adapter_slots=0)
    )
    assert not [i.name for i in model.graph.input if i.name.startswith("adapter")]


def test_missing_or_misshapen_tensor_is_named():
    spec = tiny_spec("llama", False)
    weights = tiny_weights("llama", False, seed=0)
    name = "model.layers.1.mlp.up_proj.weight"
    broken = {k: v for k, v in weights.items() if k != name}
    with pytest.raises(ValueError, match=name):
        build_graph(spec, broken, GraphOptions(quantization="fp32"))
    broken[name] = weights[name][:, :-1]
    with pytest.raises(ValueError, match=name):
        build_graph(spec, broken, GraphOptions(quantization="fp32"))
