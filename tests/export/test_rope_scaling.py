"""RoPE scaling: the inverse-frequency function against transformers' ROPE_INIT_FUNCTIONS
(hypothesis over the parameters), then whole tiny checkpoints with each scaling — read from
config.json and from GGUF — whose torch reference and exported ONNX graph give transformers'
own logits."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from runtime import artifact
from ruvdllm.errors import RuvdllmError
from ruvdllm_export.checkpoints import load_checkpoint
from ruvdllm_export.onnx_graph import GraphOptions, build_graph
from ruvdllm_export.reference import DiffusionLM, causal_block_ids
from ruvdllm_export.rope_scaling import RopeScaling, default_inv_freq, rope_frequencies, static_table_notice
from tests.export.graph_harness import feeds, run, session
from tests.export.reference_models import ARCHITECTURES, tiny_checkpoint
from tests.fixtures.tiny_models import ARCHS, TINY, make_gguf_checkpoint, make_hf_checkpoint

torch.set_num_threads(1)
HEAD_DIM = TINY.head_dim
PAIRS = HEAD_DIM // 2
ULPS = 4 * float(np.finfo(np.float32).eps)  # numpy's and torch's float32 pow may differ by an ulp or two

# scaling -> transformers rope_parameters (without rope_theta), for the tiny models (max_position 256)
SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 3.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn_attention": {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 32,
        "attention_factor": 1.3,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
    },
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "longrope": {
        "rope_type": "longrope",
        "short_factor": [1.0 + 0.05 * i for i in range(PAIRS)],
        "long_factor": [1.5 + 0.75 * i for i in range(PAIRS)],
        "original_max_position_embeddings": 64,
    },
}


def _hf_inv_freq(params: dict, theta: float, max_position: int, seq_len: int | None):
    config = transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_position,
        rope_parameters={**params, "rope_theta": theta},
    )
    inv_freq, factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, None, seq_len=seq_len)
    return inv_freq.numpy(), factor


def _ours(params: dict, theta: float, max_position: int, context: int):
    from ruvdllm_export.checkpoints.rope_config import from_hf_config

    config = {"rope_parameters": {**params, "rope_theta": theta}, "max_position_embeddings": max_position}
    got_theta, scaling = from_hf_config(config, 10000.0, HEAD_DIM, max_position, "config.json")
    assert got_theta == theta
    return rope_frequencies(HEAD_DIM, theta, scaling, context)


def _assert_same(ours, theirs, unscaled=None):
    """Equal to a few ulps of the result, or — given `unscaled` — of the unscaled frequency: llama3's
    smoothing weight is a difference of float32 values, and an ulp of it is multiplied by up to the
    factor in the result's relative error (CI saw 9 ulps of it at factor 50), while its error
    against the unscaled frequency stays a few ulps."""
    (inv, factor), (hf_inv, hf_factor) = ours, theirs
    if unscaled is None:
        np.testing.assert_allclose(inv, hf_inv, rtol=ULPS, atol=0)
    else:
        assert np.all(np.abs(inv - hf_inv) <= ULPS * unscaled), np.abs(inv - hf_inv) / unscaled
    assert math.isclose(factor, hf_factor, rel_tol=1e-12)


factors = st.floats(1.0, 64.0)
thetas = st.sampled_from([10000.0, 500000.0, 1e6, 12345.5])


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["linear", "llama3"]),
    factor=factors,
    theta=thetas,
    low=st.floats(0.5, 2.0),
    span=st.floats(0.5, 8.0),
    original=st.integers(16, 8192),
)
def test_static_kinds_equal_transformers(kind, factor, theta, low, span, original):
    params = {"rope_type": kind, "factor": factor}
    if kind == "llama3":
        params |= {
            "low_freq_factor": low,
            "high_freq_factor": low + span,
            "original_max_position_embeddings": original,
        }
    _assert_same(
        _ours(params, theta, 4 * original, 4 * original),
        _hf_inv_freq(params, theta, 4 * original, None),
        unscaled=default_inv_freq(HEAD_DIM, theta),
    )


@settings(max_examples=40, deadline=None)
@given(
    factor=st.floats(1.0, 64.0),
    theta=thetas,
    original=st.integers(16, 8192),
    beta_fast=st.none() | st.floats(4.0, 64.0),
    beta_slow=st.none() | st.floats(0.5, 3.0),
    attention=st.none() | st.floats(0.5, 2.0),
    mscales=st.none() | st.tuples(st.floats(0.1, 2.0), st.floats(0.1, 2.0)),
    truncate=st.booleans(),
)
def test_yarn_equals_transformers(
    factor, theta, original, beta_fast, beta_slow, attention, mscales, truncate
):
    params = {
        "rope_type": "yarn",
        "factor": factor,
        "original_max_position_embeddings": original,
        "truncate": truncate,
    }
    for key, value in (("beta_fast", beta_fast), ("beta_slow", beta_slow), ("attention_factor", attention)):
        if value is not None:
            params[key] = value
    if mscales:
        params["mscale"], params["mscale_all_dim"] = mscales
    _assert_same(
        _ours(params, theta, 4 * original, 4 * original), _hf_inv_freq(params, theta, 4 * original, None)
    )


@settings(max_examples=40, deadline=None)
@given(
    factor=st.floats(1.0, 16.0), theta=thetas, max_position=st.integers(32, 4096), grow=st.integers(0, 4096)
)
def test_dynamic_equals_transformers_at_the_table_length(factor, theta, max_position, grow):
    """The table for C positions is transformers' frequencies for seq_len = C (its rule below
    max_position_embeddings is: no rescaling at all)."""
    params = {"rope_type": "dynamic", "factor": factor}
    context = max_position + grow
    _assert_same(
        _ours(params, theta, max_position, context), _hf_inv_freq(params, theta, max_position, context)
    )


@settings(max_examples=40, deadline=None)
@given(
    short=st.lists(st.floats(1.0, 4.0), min_size=PAIRS, max_size=PAIRS),
    long=st.lists(st.floats(1.0, 64.0), min_size=PAIRS, max_size=PAIRS),
    theta=thetas,
    original=st.integers(16, 4096),
    stretch=st.integers(1, 32),
    context=st.integers(1, 8192),
    attention=st.none() | st.floats(0.5, 2.0),
)
def test_longrope_equals_transformers(short, long, theta, original, stretch, context, attention):
    params = {
        "rope_type": "longrope",
        "short_factor": short,
        "long_factor": long,
        "original_max_position_embeddings": original,
    }
    if attention is not None:
        params["attention_factor"] = attention
    max_position = original * stretch
    _assert_same(
        _ours(params, theta, max_position, context), _hf_inv_freq(params, theta, max_position, context)
    )


def test_notice_only_where_static_tables_differ():
    dynamic = RopeScaling("dynamic", factor=2.0, original_max_position=256)
    assert static_table_notice(dynamic, 256) is None
    assert "255" not in static_table_notice(dynamic, 512) and "511" in static_table_notice(dynamic, 512)
    assert static_table_notice(RopeScaling("linear", factor=2.0), 10**6) is None


# --- whole models ------------------------------------------------------------------------------------
def _hf_logits(hf_model, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return (
            hf_model(input_ids=torch.from_numpy(ids)[None], position_ids=torch.from_numpy(positions)[None])
            .logits[0]
            .numpy()
        )


def _reference_logits(model: DiffusionLM, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(
            torch.from_numpy(ids)[None], torch.from_numpy(positions)[None], causal_block_ids(len(ids))
        )
    return out["logits"][0].numpy()


def _graph_check(spec, weights, ids, positions, expected, attention: str, max_position: int | None = None):
    """The fp32 graph's top-k logits and logsumexp equal transformers' logits at those ids."""
    options = GraphOptions(
        quantization="fp32", attention=attention, top_k=4, adapter_slots=0, max_position=max_position
    )
    graph = session(build_graph(spec, weights, options))
    out = run(graph, feeds(spec, options, ids, np.arange(len(ids)), position_ids=positions))
    top_ids, top_logits = out[artifact.TOPK_IDS][0], out[artifact.TOPK_LOGITS][0]
    np.testing.assert_allclose(top_logits, np.take_along_axis(expected, top_ids, axis=-1), atol=2e-4, rtol=0)
    np.testing.assert_array_equal(top_ids[:, 0], expected.argmax(-1))
    lse = np.log(np.exp(expected - expected.max(-1, keepdims=True)).sum(-1)) + expected.max(-1)
    np.testing.assert_allclose(out[artifact.LOGSUMEXP][0], lse, atol=2e-4, rtol=0)


@functools.cache
def _hf_dir(tmp_root, architecture: str, scaling: str):
    return make_hf_checkpoint(
        tmp_root / f"{architecture}-{scaling}", architecture, seed=2, rope=SCALINGS[scaling]
    )


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("rope")


# (positions of the test chunk, graph table length): past the original context where one exists
CHUNKS = {
    "linear": (200, None),
    "dynamic": (200, None),  # below max_position_embeddings: transformers does not rescale
    "yarn": (200, None),
    "yarn_attention": (200, None),
    "llama3": (200, None),
    "longrope": (200, None),  # the long factors: the sequence is past the original 64
}


@pytest.mark.filterwarnings("ignore:rope scaling 'longrope'")  # its notice: tested below
@pytest.mark.parametrize("scaling", list(SCALINGS))
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_config_json_scaling_reference_and_graph_equal_transformers(tmp_root, architecture, scaling):
    loaded = load_checkpoint(_hf_dir(tmp_root, architecture, scaling))
    assert (
        loaded.spec.rope_scaling is not None
        and loaded.spec.rope_scaling.kind == SCALINGS[scaling]["rope_type"]
    )
    hf_model, _, weights = tiny_checkpoint(architecture, seed=2, rope=SCALINGS[scaling])
    ids = np.random.default_rng(3).integers(0, loaded.spec.vocab_size, 10)
    start, _ = CHUNKS[scaling]
    positions = np.arange(start, start + len(ids))
    expected = _hf_logits(hf_model, ids, positions)
    reference = DiffusionLM(loaded.spec, loaded.weights, loaded.mask_token_id).eval()
    np.testing.assert_allclose(_reference_logits(reference, ids, positions), expected, atol=1e-4, rtol=1e-4)
    attention = "gqa" if architecture == "llama" else "attention23"  # both rotary paths of the graph
    _graph_check(loaded.spec, loaded.weights, ids, positions, expected, attention)


def test_scaling_changes_the_logits(tmp_root):
    """The scaled and the plain model differ where the scaling acts: the tests above would catch a
    scaling that was read but ignored."""
    plain, _, _ = tiny_checkpoint("llama", seed=2)
    ids, positions = np.arange(10), np.arange(200, 210)
    for scaling in SCALINGS:
        if scaling == "dynamic":
            continue  # no rescaling below max_position_embeddings, by transformers' rule
        scaled, _, _ = tiny_checkpoint("llama", seed=2, rope=SCALINGS[scaling])
        assert not np.allclose(
            _hf_logits(plain, ids, positions), _hf_logits(scaled, ids, positions), atol=1e-3
        ), scaling


def test_dynamic_beyond_the_original_context_equals_transformers_at_the_table_length(tmp_root):
    """A graph for 320 positions of a model trained for 256: equal to transformers for a forward
    that reaches position 319 (its seq_len), with a notice that shorter ones differ."""
    loaded = load_checkpoint(_hf_dir(tmp_root, "qwen2", "dynamic"))
    hf_model, _, _ = tiny_checkpoint("qwen2", seed=2, rope=SCALINGS["dynamic"])
    ids = np.random.default_rng(4).integers(0, loaded.spec.vocab_size, 8)
    positions = np.arange(312, 320)
    expected = _hf_logits(hf_model, ids, positions)
    reference = DiffusionLM(loaded.spec, loaded.weights, loaded.mask_token_id).eval().set_rope_context(320)
    np.testing.assert_allclose(_reference_logits(reference, ids, positions), expected, atol=1e-4, rtol=1e-4)
    with pytest.warns(UserWarning, match="dynamic"):
        _graph_check(loaded.spec, loaded.weights, ids, positions, expected, "attention23", max_position=320)


def test_longrope_short_factors_below_the_original_context(tmp_root):
    """Tables for at most the original 64 positions use the short factors, as transformers does
    for every sequence that short."""
    loaded = load_checkpoint(_hf_dir(tmp_root, "llama", "longrope"))
    hf_model, _, _ = tiny_checkpoint("llama", seed=2, rope=SCALINGS["longrope"])
    ids, positions = np.arange(3, 13), np.arange(50, 60)
    expected = _hf_logits(hf_model, ids, positions)
    reference = DiffusionLM(loaded.spec, loaded.weights, loaded.mask_token_id).eval().set_rope_context(64)
    np.testing.assert_allclose(_reference_logits(reference, ids, positions), expected, atol=1e-4, rtol=1e-4)
    _graph_check(loaded.spec, loaded.weights, ids, positions, expected, "attention23", max_position=64)


# --- GGUF ----------------------------------------------------------------------------------------------
def _llama_cpp_rope_freqs(params: dict, theta: float) -> np.ndarray:
    """convert_hf_to_gguf.py's Llama 3 rope factors: per pair, the divisor of its frequency."""
    freqs = 1.0 / (theta ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old = params["original_max_position_embeddings"]
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


GGUF_CASES = {
    "linear": ({"type": "linear", "factor": 4.0}, None),
    "yarn": ({"type": "yarn", "factor": 4.0, "original_context_length": 64}, None),
    "yarn_attention": (
        {
            "type": "yarn",
            "factor": 8.0,
            "original_context_length": 32,
            "yarn_attn_factor": 1.3,
            "yarn_beta_fast": 16.0,
            "yarn_beta_slow": 2.0,
        },
        None,
    ),
    "llama3": ({}, "rope_freqs"),
    "longrope": ({"type": "longrope", "original_context_length": 64}, "longrope"),
}


@pytest.mark.filterwarnings("ignore:rope scaling 'longrope'")
@pytest.mark.parametrize("scaling", list(GGUF_CASES))
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gguf_scaling_reference_and_graph_equal_transformers(tmp_path, architecture, scaling):
    metadata, tensor = GGUF_CASES[scaling]
    extra = {}
    if tensor == "rope_freqs":
        extra["rope_freqs.weight"] = _llama_cpp_rope_freqs(SCALINGS["llama3"], ARCHS[architecture].rope_theta)
    elif tensor == "longrope":  # the tensors llama.cpp's converter writes for Phi-3's factors
        extra["rope_factors_long.weight"] = np.array(SCALINGS["longrope"]["long_factor"], np.float32)
        extra["rope_factors_short.weight"] = np.array(SCALINGS["longrope"]["short_factor"], np.float32)
    path = make_gguf_checkpoint(
        tmp_path / "m.gguf", architecture, "F32", seed=2, rope_metadata=metadata, extra_tensors=extra
    )
    loaded = load_checkpoint(path)
    assert loaded.spec.rope_scaling is not None
    hf_model, _, _ = tiny_checkpoint(architecture, seed=2, rope=SCALINGS[scaling])
    ids, positions = np.arange(20, 30), np.arange(200, 210)
    expected = _hf_logits(hf_model, ids, positions)
    reference = DiffusionLM(loaded.spec, loaded.weights, loaded.mask_token_id).eval()
    np.testing.assert_allclose(_reference_logits(reference, ids, positions), expected, atol=1e-4, rtol=1e-4)
    _graph_check(loaded.spec, loaded.weights, ids, positions, expected, "attention23")


# --- bad input -------------------------------------------------------------------------------------------
def test_unknown_scaling_in_config_json_is_one_line_naming_file_and_type(tmp_path):
    import json

    directory = make_hf_checkpoint(tmp_path / "m", "llama")
    config = json.loads((directory / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "wobbly", "factor": 2.0, "rope_theta": 10000.0}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuvdllmError) as error:
        load_checkpoint(directory)
    message = str(error.value)
    assert "\n" not in message and "config.json" in message and "'wobbly'" in message


@pytest.mark.parametrize(
    "params, needle",
    [
        ({"rope_type": "dynamic"}, "'factor'"),
        ({"rope_type": "llama3", "factor": 8.0}, "'low_freq_factor'"),
        (
            {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]},
            "short_factor has 1 entries",
        ),
        ({"rope_type": "linear", "factor": -1.0}, "positive"),
        ({"rope_type": "default", "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ],
)
def test_malformed_scaling_in_config_json(params, needle):
    from ruvdllm_export.checkpoints.rope_config import from_hf_config

    with pytest.raises(RuvdllmError, match=needle):
        from_hf_config({"rope_parameters": params}, 10000.0, HEAD_DIM, 256, "m/config.json")


def test_unknown_gguf_scaling_fails_before_reading_weights(tmp_path, monkeypatch):
    from ruvdllm_export.checkpoints import gguf_reader

    path = make_gguf_checkpoint(
        tmp_path / "m.gguf", "llama", "Q4_1", rope_metadata={"type": "wobbly", "factor": 2.0}
    )
    monkeypatch.setattr(gguf_reader, "convert_tensor", lambda tensor: pytest.fail("read a weight first"))
    with pytest.raises(RuvdllmError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "'wobbly'" in message


@pytest.mark.filterwarnings("ignore:rope scaling 'longrope'")
@pytest.mark.parametrize("scaling", [*SCALINGS, "gguf_llama3"])
def test_ar_answers_transformers_model_keeps_the_scaling(tmp_root, tmp_path, scaling):
    """The distillation corpus' transformers model (convert/ar_answers.py) rebuilt from a scaled
    spec rotates as the reference does, llama.cpp's rope_freqs included."""
    from ruvdllm_export.convert.ar_answers import causal_lm

    if scaling == "gguf_llama3":
        freqs = _llama_cpp_rope_freqs(SCALINGS["llama3"], ARCHS["llama"].rope_theta)
        path = make_gguf_checkpoint(
            tmp_path / "m.gguf", "llama", "F32", seed=2, extra_tensors={"rope_freqs.weight": freqs}
        )
        loaded = load_checkpoint(path)
    else:
        loaded = load_checkpoint(_hf_dir(tmp_root, "llama", scaling))
    ids, positions = np.arange(30, 40), np.arange(200, 210)
    expected = _reference_logits(
        DiffusionLM(loaded.spec, loaded.weights, loaded.mask_token_id).eval(), ids, positions
    )
    got = _hf_logits(causal_lm(loaded, torch.float32), ids, positions)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_older_config_layouts_read_the_same():
    """transformers 4.x files: `rope_scaling` with `type` or `rope_type`, rope_theta at the top level
    (Llama 3.1's and Qwen2.5's long-context settings as their config.json spell them)."""
    from ruvdllm_export.checkpoints.rope_config import from_hf_config

    llama31 = {
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    }
    theta, scaling = from_hf_config(llama31, 10000.0, 128, 131072, "config.json")
    assert theta == 500000.0
    assert scaling == RopeScaling(
        "llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192
    )
    qwen25 = {
        "rope_theta": 1e6,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    }
    theta, scaling = from_hf_config(qwen25, 10000.0, 128, 32768, "config.json")
    assert (theta, scaling.kind, scaling.factor, scaling.original_max_position) == (1e6, "yarn", 4.0, 32768)
    assert from_hf_config({"rope_scaling": None, "rope_theta": 5.0}, 1.0, 128, 64, "c") == (5.0, None)


def test_plain_gguf_rope_reads_as_no_scaling():
    from ruvdllm_export.checkpoints.rope_config import from_gguf

    assert from_gguf({}, "llama", {}, 16, 256, "m.gguf") is None
    assert (
        from_gguf(
            {"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 1.0}, "llama", {}, 16, 256, "m"
        )
        is None
    )
    with pytest.raises(RuvdllmError, match="rope over 8 of 16"):
        from_gguf({"llama.rope.dimension_count": 8}, "llama", {}, 16, 256, "m.gguf")
    with pytest.raises(RuvdllmError, match="rope_factors_long"):
        from_gguf({"llama.rope.scaling.type": "longrope"}, "llama", {}, 16, 256, "m.gguf")
