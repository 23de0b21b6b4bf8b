"""runtime/memory_plan.py: a chunk cut only where no earlier row sees a later one; the pieces give
the same outputs and cache as one forward (onnxruntime, the tiny model); a generation that cannot
fit is refused in one line, and a larger budget never refuses what a smaller one accepts."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import artifact
from runtime.backend import Chunk
from runtime.bd3lm import bd3lm_chunk
from runtime.memory_plan import (
    MAX_PIECE,
    MIN_PIECE,
    DeviceLimits,
    check_fits,
    fits,
    forward_bytes,
    forward_in_pieces,
    piece_rows,
    split_points,
)
from runtime.ort_backend import OrtBackend, OrtOptions
from ruvdllm.errors import RuvdllmError

DEFAULT_MODEL = artifact.ArtifactConfig(  # SmolLM2-135M's shapes
    architecture="llama",
    vocab_size=49152,
    hidden_size=576,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    max_position=8192,
    mask_token_id=16,
)
GiB = 1 << 30


def chunk_of(blocks: list[int], output_offset: int) -> Chunk:
    n = len(blocks)
    return Chunk(list(range(n)), list(range(n)), blocks, output_offset, [[0.0]] * n)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=60),
    st.integers(1, 16),
    st.data(),
)
def test_cuts_only_where_no_earlier_row_sees_a_later_one(blocks, rows, data):
    offset = data.draw(st.integers(0, len(blocks) - 1))
    cuts = split_points(chunk_of(blocks, offset), rows)
    assert cuts == sorted(set(cuts))
    for previous, cut in zip([0, *cuts], cuts, strict=False):
        assert 1 <= cut <= offset and cut - previous >= rows
        assert max(blocks[:cut]) < min(blocks[cut:])


@given(st.integers(1, 300), st.integers(1, 16), st.integers(1, 64))
def test_a_prompt_is_cut_every_rows_rows_up_to_its_last_token(prompt, block, rows):
    chunk = bd3lm_chunk(list(range(prompt)), 0, [None] * block, 0, [[0.0]] * (prompt + block))
    cuts = split_points(chunk, rows)
    if prompt + block <= rows:
        assert cuts == []
    else:
        assert cuts == list(range(rows, prompt, rows))  # the last prompt token's row is an output


def test_mdlm_is_one_bidirectional_block_and_never_cut():
    assert split_points(chunk_of([0] * 100, 40), 8) == []


@pytest.fixture(scope="module")
def backends(tiny_model_dir):
    config = artifact.load_config(tiny_model_dir)
    make = lambda: OrtBackend(tiny_model_dir / artifact.GRAPH_NAME, config, OrtOptions(intra_op_threads=1))  # noqa: E731
    return config, make(), make()


@pytest.mark.parametrize("cached", [0, 5])
def test_pieces_give_the_outputs_and_cache_of_one_forward(backends, cached):
    config, whole, pieces = backends
    rng = random.Random(cached)
    tokens = [rng.randrange(4, config.vocab_size) for _ in range(cached + 70)]
    for backend in (whole, pieces):  # the same cached prefix in both
        backend.reset()
        if cached:
            backend.forward(bd3lm_chunk(tokens[:cached], 0, [], 0, [[0.0] * config.adapter_slots] * cached))
            backend.commit(cached)
    block = [None] * 4
    rows = [[rng.random() for _ in range(config.adapter_slots)] for _ in range(len(tokens) - cached + 4)]
    chunk = bd3lm_chunk(tokens, cached, block, config.mask_token_id, rows)
    progress = []
    one = whole.forward(chunk)
    split = forward_in_pieces(
        pieces.forward, pieces.commit, cached, chunk, 16, lambda done, total: progress.append((done, total))
    )
    assert progress == [(16, len(chunk)), (32, len(chunk)), (48, len(chunk)), (64, len(chunk))]
    assert split.topk_ids == one.topk_ids
    np.testing.assert_allclose(split.topk_logits, one.topk_logits, atol=1e-4)
    np.testing.assert_allclose(split.logsumexp, one.logsumexp, atol=1e-4)
    np.testing.assert_allclose(split.query(2), one.query(2), atol=1e-4)
    # the caller commits as after one forward; the next block sees the same cache
    for backend in (whole, pieces):
        backend.commit(len(tokens) - 1)
    after = [bd3lm_chunk(tokens, len(tokens) - 1, [None] * 4, config.mask_token_id, rows[:5])]
    a, b = whole.forward(after[0]), pieces.forward(after[0])
    assert a.topk_ids == b.topk_ids
    np.testing.assert_allclose(a.topk_logits, b.topk_logits, atol=1e-4)


def test_rows_per_piece_fit_a_full_context():
    wasm = DeviceLimits(budget=4 * GiB - 260_000_000)
    rows = piece_rows(DEFAULT_MODEL, wasm)
    assert rows == MAX_PIECE and fits(DEFAULT_MODEL, wasm, rows, DEFAULT_MODEL.max_position - rows)
    gpu = DeviceLimits(budget=4 * GiB, largest_tensor=128 << 20)  # WebGPU's default buffer limit
    rows = piece_rows(DEFAULT_MODEL, gpu)
    assert MIN_PIECE <= rows < MAX_PIECE and fits(DEFAULT_MODEL, gpu, rows, DEFAULT_MODEL.max_position - rows)
    assert piece_rows(DEFAULT_MODEL, DeviceLimits(budget=1, piece_rows=7)) == 7  # the page's own


def test_the_issues_long_prompt_reads_in_pieces_on_bd3lm_and_is_refused_on_mdlm():
    """6,364 prompt tokens on WebAssembly's 4 GiB: one forward failed with std::bad_alloc."""
    wasm = DeviceLimits(budget=4 * GiB - 260_000_000)
    assert forward_bytes(DEFAULT_MODEL, 6364, 0) > wasm.budget
    check_fits(DEFAULT_MODEL, wasm, "bd3lm", 6364, 64, 8)
    with pytest.raises(RuvdllmError) as error:
        check_fits(DEFAULT_MODEL, wasm, "mdlm", 6364, 64, 64)
    message = str(error.value)
    assert message.startswith("prompt: 6364 tokens + length 64 in one MDLM forward need about")
    assert "BD3LM reads a long prompt in pieces" in message and "\n" not in message
    with pytest.raises(RuvdllmError, match="per forward, more than this device allows"):
        check_fits(DEFAULT_MODEL, DeviceLimits(budget=200_000_000), "bd3lm", 8000, 64, 8)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["bd3lm", "mdlm"]),
    st.integers(1, 8000),
    st.integers(1, 190),
    st.integers(20, 34),
    st.integers(0, 3),
)
def test_a_larger_budget_never_refuses_what_a_smaller_one_accepts(sampler, prompt, length, log_budget, more):
    small = DeviceLimits(budget=1 << log_budget, piece_rows=64)
    large = DeviceLimits(budget=small.budget << more, piece_rows=64)
    span = length if sampler == "mdlm" else min(8, length)
    try:
        check_fits(DEFAULT_MODEL, small, sampler, prompt, length, span)
    except RuvdllmError:
        return
    check_fits(DEFAULT_MODEL, large, sampler, prompt, length, span)
