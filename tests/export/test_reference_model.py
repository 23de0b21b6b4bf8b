"""The torch diffusion model against transformers (float mode, causal attention), its KV cache
against one long forward, its 4-bit mode against float on the dequantized weights, and its
outputs against the artifact contract."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import artifact
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.quant.q4 import dequantize_q4, quantize_q4
from ruvdllm_export.reference import (
    DiffusionLM,
    bidirectional_block_ids,
    block_causal_block_ids,
    causal_block_ids,
)
from ruvdllm_export.spec import EMBED, LINEARS, LM_HEAD, linear_weight
from tests.export.reference_models import ARCHITECTURES, tiny_checkpoint

torch.set_num_threads(1)


@functools.cache
def tiny(architecture: str, tied: bool):
    """(hf_model, spec, weights, float DiffusionLM), built once per test session."""
    hf_model, spec, weights = tiny_checkpoint(architecture, tied=tied, seed=1)
    return hf_model, spec, weights, DiffusionLM(spec, weights, mask_token_id=spec.vocab_size - 1)


def _ids(length: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def _positions(start: int, length: int) -> torch.Tensor:
    return torch.arange(start, start + length)[None]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("tied", [False, True])
def test_float_causal_equals_transformers(architecture, tied):
    hf_model, spec, _, model = tiny(architecture, tied)
    ids = _ids(12, spec.vocab_size, seed=3)
    with torch.no_grad():
        expected = hf_model(input_ids=ids, position_ids=_positions(0, 12)).logits
        got = model(ids, _positions(0, 12), causal_block_ids(12))["logits"]
    assert expected.abs().max() > 1.0  # random weights large enough that a wrong op would show
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_positions_enter_through_rope():
    """RoPE makes attention depend on relative positions: a uniform shift of position_ids
    leaves the logits unchanged, spreading them apart does not."""
    _, spec, _, model = tiny("llama", False)
    ids = _ids(6, spec.vocab_size, seed=4)
    with torch.no_grad():
        at_zero = model(ids, _positions(0, 6), bidirectional_block_ids(6))["logits"]
        at_five = model(ids, _positions(5, 6), bidirectional_block_ids(6))["logits"]
        spread = model(ids, 2 * _positions(0, 6), bidirectional_block_ids(6))["logits"]
    torch.testing.assert_close(at_zero, at_five, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(at_zero, spread, atol=1e-3)


@settings(max_examples=12, deadline=None)
@given(
    architecture=st.sampled_from(ARCHITECTURES),
    prefix=st.integers(1, 9),
    chunk_steps=st.lists(st.integers(0, 2), min_size=1, max_size=8),
)
def test_kv_cache_equals_one_long_forward(architecture, prefix, chunk_steps):
    """prefix (causal) then a chunk with past == one forward over prefix + chunk, whenever the
    chunk's blocks all come after the prefix's (then the graph's "past is visible" rule and the
    block rule agree)."""
    _, spec, _, model = tiny(architecture, False)
    length = len(chunk_steps)
    ids = _ids(prefix + length, spec.vocab_size, seed=prefix * 31 + length)
    chunk_blocks = (prefix + torch.tensor(chunk_steps).cumsum(0))[None]  # non-decreasing, > prefix ids
    whole_blocks = torch.cat([causal_block_ids(prefix), chunk_blocks], dim=1)
    with torch.no_grad():
        whole = model(ids, _positions(0, prefix + length), whole_blocks, output_offset=prefix)
        first = model(ids[:, :prefix], _positions(0, prefix), causal_block_ids(prefix))
        past = [
            (first[artifact.present_key(i)], first[artifact.present_value(i)]) for i in range(spec.num_layers)
        ]
        second = model(ids[:, prefix:], _positions(prefix, length), chunk_blocks - 7, past=past)
    for name in (artifact.TOPK_LOGITS, artifact.LOGSUMEXP, artifact.ENTROPY, artifact.QUERY):
        torch.testing.assert_close(second[name], whole[name], atol=1e-5, rtol=1e-5)
    # The same candidates; two logits within rounding of each other may swap places.
    chosen = torch.gather(whole["logits"][:, prefix:], -1, second[artifact.TOPK_IDS])
    torch.testing.assert_close(chosen, whole[artifact.TOPK_LOGITS], atol=1e-5, rtol=1e-5)
    for layer in range(spec.num_layers):
        torch.testing.assert_close(
            second[artifact.present_key(layer)], whole[artifact.present_key(layer)], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            second[artifact.present_value(layer)], whole[artifact.present_value(layer)], atol=1e-5, rtol=1e-5
        )


def test_block_ids_are_relative():
    """Only the order of block ids matters, not their values."""
    _, spec, _, model = tiny("qwen3", False)
    ids = _ids(8, spec.vocab_size, seed=5)
    blocks = block_causal_block_ids(8, 3)
    with torch.no_grad():
        a = model(ids, _positions(0, 8), blocks)["logits"]
        b = model(ids, _positions(0, 8), blocks * 10 + 4)["logits"]
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("blocks", "unaffected_rows"),
    [(causal_block_ids(8), 5), (block_causal_block_ids(8, 4), 4), (bidirectional_block_ids(8), 0)],
    ids=["causal", "block-causal", "bidirectional"],
)
def test_attention_modes_hide_later_blocks(blocks, unaffected_rows):
    """Changing tokens 5..7 leaves exactly the rows that cannot see them unchanged."""
    _, spec, _, model = tiny("llama", True)
    ids = _ids(8, spec.vocab_size, seed=6)
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % spec.vocab_size
    with torch.no_grad():
        before = model(ids, _positions(0, 8), blocks)["logits"]
        after = model(changed, _positions(0, 8), blocks)["logits"]
    torch.testing.assert_close(before[:, :unaffected_rows], after[:, :unaffected_rows], atol=0, rtol=0)
    assert (before[:, unaffected_rows:] - after[:, unaffected_rows:]).abs().amax(-1).min() > 1e-4


def _quantized(weights: dict, spec) -> dict:
    """Every linear (and the untied head) as Q4Tensor; embeddings and norms stay float."""
    linears = {linear_weight(layer, proj) for layer in range(spec.num_layers) for proj in LINEARS}
    linears.add(LM_HEAD)
    return {k: quantize_q4(v) if k in linears else v for k, v in weights.items()}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_q4_equals_float_on_dequantized_weights(architecture):
    _, spec, weights, _ = tiny(architecture, False)
    q4_weights = _quantized(weights, spec)
    dequantized = {k: dequantize_q4(v) if not isinstance(v, np.ndarray) else v for k, v in q4_weights.items()}
    q4_model = DiffusionLM(spec, q4_weights, mask_token_id=0)
    float_model = DiffusionLM(spec, dequantized, mask_token_id=0)
    assert q4_model.quantized and not float_model.quantized
    ids = _ids(10, spec.vocab_size, seed=7)
    with torch.no_grad():
        got = q4_model(ids, _positions(0, 10), block_causal_block_ids(10, 4))
        expected = float_model(ids, _positions(0, 10), block_causal_block_ids(10, 4))
    torch.testing.assert_close(got["logits"], expected["logits"], atol=0, rtol=0)
    # and the 4-bit model is a different model: quantization error is visible
    with torch.no_grad():
        original = DiffusionLM(spec, weights, mask_token_id=0)(
            ids, _positions(0, 10), block_causal_block_ids(10, 4)
        )
    assert not torch.allclose(original["logits"], got["logits"], atol=1e-4)


def test_q4_with_mins_and_tied_q4_embedding():
    """A Q4_1-style tensor (mins) and a 4-bit tied embedding: the head reuses the 4-bit table,
    the lookup reads its dequantized rows."""
    _, spec, weights, _ = tiny("llama", True)
    rng = np.random.default_rng(0)
    q4_weights = dict(_quantized(weights, spec))
    for name in list(q4_weights):
        if name.endswith("gate_proj.weight"):
            t = q4_weights[name]
            q4_weights[name] = type(t)(
                t.packed,
                t.scales,
                np.zeros_like(t.zero_points),
                rng.normal(0, 0.05, t.scales.shape).astype(np.float32),
                t.in_features,
            )
    q4_weights[EMBED] = quantize_q4(weights[EMBED])
    dequantized = {k: dequantize_q4(v) if not isinstance(v, np.ndarray) else v for k, v in q4_weights.items()}
    ids = _ids(9, spec.vocab_size, seed=8)
    with torch.no_grad():
        got = DiffusionLM(spec, q4_weights, 0)(ids, _positions(0, 9), bidirectional_block_ids(9))["logits"]
        expected = DiffusionLM(spec, dequantized, 0)(ids, _positions(0, 9), bidirectional_block_ids(9))[
            "logits"
        ]
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_outputs_follow_the_contract():
    _, spec, _, model = tiny("qwen2", False)
    length, offset = 10, 4
    ids = _ids(length, spec.vocab_size, seed=9)
    with torch.no_grad():
        out = model(ids, _positions(0, length), bidirectional_block_ids(length), output_offset=offset)
    rows = out["logits"][:, offset:]
    assert out[artifact.TOPK_IDS].shape == (1, length - offset, model.top_k)
    assert out[artifact.TOPK_IDS].dtype == torch.int64
    assert torch.all(out[artifact.TOPK_LOGITS][..., :-1] >= out[artifact.TOPK_LOGITS][..., 1:])
    torch.testing.assert_close(rows.gather(-1, out[artifact.TOPK_IDS]), out[artifact.TOPK_LOGITS])
    assert torch.equal(out[artifact.TOPK_IDS][..., 0], rows.argmax(-1))
    probs = torch.softmax(rows.double(), -1)
    torch.testing.assert_close(out[artifact.LOGSUMEXP].double(), torch.logsumexp(rows.double(), -1))
    torch.testing.assert_close(
        out[artifact.ENTROPY].double(), -(probs * probs.log()).sum(-1), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(out[artifact.QUERY].norm(dim=-1), torch.ones(1, length - offset))
    assert out[artifact.QUERY].shape == (1, length - offset, spec.hidden_size)
    assert out[artifact.present_key(0)].shape == (1, spec.num_kv_heads, length, spec.head_dim)


def test_batched_rows_are_independent():
    """Training runs batches: each row equals the same sequence run alone."""
    _, spec, _, model = tiny("llama", False)
    ids = torch.cat([_ids(7, spec.vocab_size, seed=s) for s in (10, 11)])
    blocks = block_causal_block_ids(7, 2).expand(2, -1)
    with torch.no_grad():
        both = model(ids, _positions(0, 7).expand(2, -1), blocks)["logits"]
        alone = model(ids[1:], _positions(0, 7), blocks[1:])["logits"]
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=1e-5)


def test_bad_weights_are_named():
    _, spec, weights, _ = tiny("llama", False)
    broken = dict(weights)
    del broken[linear_weight(1, "up_proj")]
    with pytest.raises(RuvdllmError, match="model.layers.1.mlp.up_proj.weight"):
        DiffusionLM(spec, broken, mask_token_id=0)
    with pytest.raises(RuvdllmError, match="mask token id"):
        DiffusionLM(spec, weights, mask_token_id=spec.vocab_size)


@pytest.mark.parametrize("qtype", ["F32", "Q4_0", "Q4_1"])
def test_from_loaded_checkpoints(tmp_path, qtype):
    """Checkpoints as the readers deliver them: an HF directory equals transformers; a GGUF
    file's exact 4-bit tensors run 4-bit and equal float mode on their dequantized values."""
    from ruvdllm_export.checkpoints import load_checkpoint
    from tests.fixtures.tiny_models import make_gguf_checkpoint, make_hf_checkpoint

    ids = _ids(8, 300, seed=12)
    blocks = block_causal_block_ids(8, 4)
    if qtype == "F32":
        loaded = load_checkpoint(make_hf_checkpoint(tmp_path / "hf", "qwen2", seed=1))
        hf_model = tiny("qwen2", False)[0]
        model = DiffusionLM.from_checkpoint(loaded)
        assert not model.quantized and model.mask_token_id == loaded.mask_token_id
        with torch.no_grad():
            got = model(ids, _positions(0, 8), causal_block_ids(8))["logits"]
            expected = hf_model(input_ids=ids, position_ids=_positions(0, 8)).logits
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        return
    loaded = load_checkpoint(make_gguf_checkpoint(tmp_path / "m.gguf", "llama", qtype=qtype, seed=1))
    model = DiffusionLM.from_checkpoint(loaded, top_k=4)
    assert model.quantized and model.top_k == 4
    dequantized = {k: v if isinstance(v, np.ndarray) else dequantize_q4(v) for k, v in loaded.weights.items()}
    with torch.no_grad():
        got = model(ids, _positions(0, 8), blocks)["logits"]
        expected = DiffusionLM(loaded.spec, dequantized, loaded.mask_token_id)(ids, _positions(0, 8), blocks)[
            "logits"
        ]
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_cached_dequantized_weights_change_nothing():
    _, spec, weights, _ = tiny("qwen3", True)
    model = DiffusionLM(spec, _quantized(weights, spec), mask_token_id=0)
    ids = _ids(7, spec.vocab_size, seed=13)
    with torch.no_grad():
        on_the_fly = model(ids, _positions(0, 7), bidirectional_block_ids(7))["logits"]
        cached = model.cache_dequantized()(ids, _positions(0, 7), bidirectional_block_ids(7))["logits"]
    assert model.layers[0].proj["q_proj"].dequantized is not None
    torch.testing.assert_close(cached, on_the_fly, atol=0, rtol=0)
    model.cache_dequantized(False)
    assert all(layer.proj["q_proj"].dequantized is None for layer in model.layers)
