"""The verified sampler's drafter is the diffusion model with its adapters: TALoRA's weights of
t = 1 and DGR's retrievals on the drafter rows (and on them only, so the output stays the AR
model's), and each forward's uncertainty and patterns in the trace that loop A records."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from runtime.dgr import DgrConfig
from runtime.generate import default_control, generate
from runtime.index import ExactIndex
from runtime.learning.trajectory import Pending, trajectory_of
from runtime.settings import GenerationSettings
from runtime.talora import TaloraConfig
from tests.runtime.toy_backend import TOY_CONFIG, ToyBackend

GROUPS = len(TOY_CONFIG.timestep_groups) - 1  # slots [0, 3) TALoRA, [3, 5) DGR


def pattern_index(seed: int = 3) -> ExactIndex:
    index = ExactIndex(TOY_CONFIG.hidden_size)
    rng = random.Random(seed)
    index.add([[rng.gauss(0, 1) for _ in range(TOY_CONFIG.hidden_size)] for _ in range(10)], [3, 4] * 5)
    return index


def settings(**given) -> GenerationSettings:
    return GenerationSettings(
        **{"sampler": "verified", "length": 24, "block_size": 4, "stop_at_eos": False, **given}
    )


def run(dgr: DgrConfig | None, temperature: float = 0.0, record_query: bool = False):
    backend = ToyBackend(TOY_CONFIG)
    control = default_control(backend, TaloraConfig(), dgr, pattern_index())
    control.record_query = record_query
    result = generate(backend, [3, 5, 7], settings(temperature=temperature), random.Random(1), control)
    return result, backend, control


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_retrieval_changes_the_drafts_not_the_output(temperature):
    """Every drafter row may retrieve (threshold 0), yet the verifier rows carry no adapter weight
    at any temperature, and greedy tokens are the AR sampler's own, with retrieval or without."""
    dgr = DgrConfig(strategy="entropy", threshold=0.0)
    with_dgr, backend, _ = run(dgr, temperature)
    assert any(e.retrieved for e in with_dgr.trace)
    for chunk in backend.chunks:
        for gate, row in zip(chunk.adapter_gate, chunk.adapter_weights, strict=True):
            assert gate == 1.0 or not any(row)  # verifier rows: the plain AR model
    if temperature == 0.0:
        ar = generate(ToyBackend(TOY_CONFIG), [3, 5, 7], settings(sampler="ar"), random.Random(1))
        without, _, _ = run(None)
        assert with_dgr.tokens == ar.tokens == without.tokens


def test_what_a_forward_retrieves_weighs_the_next_blocks_rows_by_position():
    dgr = DgrConfig(strategy="entropy", threshold=0.0, budget=2)
    result, backend, _ = run(dgr)
    checked = 0
    # a forward that drafts a block, then the next one that does (forwards checking drafts draft none)
    blocks = [i for i, chunk in enumerate(backend.chunks) if any(chunk.adapter_gate)]
    assert any(j - k > 1 for k, j in pairwise(blocks))  # retrievals outlive a forward without a block
    for k, j in pairwise(blocks):
        event, after = result.trace[k], backend.chunks[j]
        drafter = [row for gate, row in zip(after.adapter_gate, after.adapter_weights, strict=True) if gate]
        talora_t1 = drafter[0][:GROUPS] if drafter else None
        retrieved = {p - event.offset for p in event.retrieved}
        for i, row in enumerate(drafter):
            assert row[:GROUPS] == talora_t1  # TALoRA of t = 1 on every drafter row
            dgr_weights = row[GROUPS:]
            assert (sum(dgr_weights) == pytest.approx(dgr.strength)) == (i in retrieved)
            checked += i in retrieved
        assert len(retrieved) <= dgr.budget and 0 not in retrieved  # row 0 is the AR row's
    assert checked > 0


def test_without_patterns_the_drafter_rows_carry_talora_alone():
    result, backend, _ = run(None)
    assert not any(e.retrieved or e.patterns for e in result.trace)
    for chunk in backend.chunks:
        for gate, row in zip(chunk.adapter_gate, chunk.adapter_weights, strict=True):
            assert not any(row[GROUPS:]) and (any(row[:GROUPS]) == (gate == 1.0))


def test_the_trace_records_the_drafts_uncertainty_for_loop_a():
    dgr = DgrConfig(strategy="entropy", threshold=0.0)
    result, backend, control = run(dgr, record_query=True)
    drafting = [e for e in result.trace if e.tokens.count(None)]  # forwards that left drafts pending
    assert drafting and all(e.entropy > 0.0 and 0.0 < e.confidence <= 1.0 for e in drafting)
    assert any(e.patterns for e in result.trace)
    assert control.embedding is not None and len(control.embedding) == TOY_CONFIG.hidden_size
    stored = trajectory_of(
        Pending(
            "cmpl-1",
            0.0,
            "toy",
            "bank",
            [3, 5, 7],
            settings(),
            result.trace,
            "",
            result.tokens,
            result.finish_reason,
            result.wall_ms,
            "prompt",
            None,
            control.embedding,
            control.talora,
        )
    )
    assert stored.embedding is not None and stored.patterns and stored.settings["sampler"] == "verified"
    assert any(step["entropy"] > 0 and step["patterns"] for step in stored.steps)
    assert all(step["talora"] for step in stored.steps)  # t = 1: the drafter's weights
