"""Attention patterns: the graph's block-id rule, and the training-only visibility matrices
checked against the forwards they stand for."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvdllm_export.reference import (
    DiffusionLM,
    annealed_visibility,
    bd3lm_training_visibility,
    bidirectional_block_ids,
    block_causal_block_ids,
    causal_block_ids,
    visibility,
)
from tests.export.reference_models import tiny_checkpoint

torch.set_num_threads(1)


@settings(max_examples=50, deadline=None)
@given(block_ids=st.lists(st.integers(-3, 5), min_size=1, max_size=10), past=st.integers(0, 4))
def test_visibility_is_the_graphs_rule(block_ids, past):
    ids = torch.tensor(block_ids)[None]
    visible = visibility(ids, past)
    assert visible.shape == (1, len(block_ids), past + len(block_ids))
    assert visible[0, :, :past].all()
    for i, bi in enumerate(block_ids):
        for j, bj in enumerate(block_ids):
            assert bool(visible[0, i, past + j]) == (bj <= bi)


@settings(max_examples=30, deadline=None)
@given(length=st.integers(1, 20), block=st.integers(1, 8), start=st.integers(0, 16))
def test_block_id_helpers(length, block, start):
    assert visibility(causal_block_ids(length))[0].equal(torch.ones(length, length, dtype=torch.bool).tril())
    assert visibility(bidirectional_block_ids(length))[0].all()
    ids = block_causal_block_ids(length, block, start)[0]
    assert torch.equal(ids, (torch.arange(length) + start) // block)
    assert torch.all(ids[1:] >= ids[:-1])
    assert block_causal_block_ids(length, 1).equal(causal_block_ids(length))


def test_bd3lm_training_visibility_small():
    v = bd3lm_training_visibility(4, 2).int()
    expected = torch.tensor(
        [  # x_t (0..3) then x_0 (4..7)
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1],
        ]
    )
    assert torch.equal(v, expected)


def test_bd3lm_training_forward_equals_blockwise_forwards():
    """One forward over [x_t, x_0] under the BD3LM matrix == for each block b, a forward over
    clean blocks < b followed by noisy block b (the sampler's view)."""
    _, spec, weights = tiny_checkpoint("qwen3", seed=3)
    model = DiffusionLM(spec, weights, mask_token_id=5)
    length, block = 8, 3
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, spec.vocab_size, (1, length), generator=generator)
    noisy = torch.where(torch.rand(1, length, generator=generator) < 0.5, 5, clean)
    positions = torch.arange(length)[None]
    with torch.no_grad():
        both, _ = model.backbone(
            torch.cat([noisy, clean], 1),
            torch.cat([positions, positions], 1),
            visible=bd3lm_training_visibility(length, block)[None],
        )
        for start in range(0, length, block):
            end = min(start + block, length)
            ids = torch.cat([clean[:, :start], noisy[:, start:end]], 1)
            blocks = block_causal_block_ids(end, block)
            alone, _ = model.backbone(ids, positions[:, :end], blocks)
            torch.testing.assert_close(both[:, start:end], alone[:, start:end], atol=1e-5, rtol=1e-5)
        clean_alone, _ = model.backbone(clean, positions, block_causal_block_ids(length, block))
        torch.testing.assert_close(both[:, length:], clean_alone, atol=1e-5, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(length=st.integers(2, 12), progress=st.floats(0, 1), seed=st.integers(0, 100))
def test_annealed_visibility_moves_from_causal_to_target(length, progress, seed):
    target = visibility(bidirectional_block_ids(length))[0]
    causal = visibility(causal_block_ids(length))[0]
    generator = torch.Generator().manual_seed(seed)
    annealed = annealed_visibility(target, progress, generator)
    assert torch.all(annealed >= causal) and torch.all(annealed <= target)
    generator = torch.Generator().manual_seed(seed)
    assert torch.equal(annealed_visibility(target, 0.0, generator), causal)
    assert torch.equal(annealed_visibility(target, 1.0, generator), target)
