import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.dgr import (
    DgrConfig,
    confidence_gap,
    next_theta,
    normalised_entropy,
    select_positions,
    step_bar,
    timestep_normalise,
    vote,
)
from ruvdllm.errors import RuvdllmError


@given(
    scores=st.lists(st.floats(0.0, 3.0), max_size=40),
    bar=st.floats(0.0, 2.0),
    budget=st.integers(0, 10),
)
def test_budget_respected_and_most_uncertain_first(scores, bar, budget):
    pairs = list(enumerate(scores))
    chosen = select_positions(pairs, bar, budget)
    assert len(chosen) <= budget
    assert all(scores[p] > bar for p in chosen)
    assert len(chosen) == min(budget, sum(1 for s in scores if s > bar))
    left_out = [s for p, s in pairs if p not in chosen and s > bar]
    assert all(scores[p] >= s for p in chosen for s in left_out)


def test_metrics_are_fractions():
    assert normalised_entropy(math.log(100), 100) == pytest.approx(1.0)
    assert normalised_entropy(0.0, 100) == 0.0
    assert confidence_gap([0.0, -50.0], 0.0) == pytest.approx(0.0)  # certain
    assert confidence_gap([math.log(0.5), math.log(0.5)], 0.0) == pytest.approx(1.0)  # a tie


@given(u=st.floats(0.0, 1.0), t=st.floats(0.0, 1.0))
def test_timestep_normalisation_raises_the_bar_with_t(u, t):
    early, late = timestep_normalise(u, 1.0, 0.5), timestep_normalise(u, 0.0, 0.5)
    assert early == pytest.approx(u)
    assert late == pytest.approx(2 * u)
    assert early - 1e-12 <= timestep_normalise(u, t, 0.5) <= late + 1e-12


def test_hybrid_bar_alternates_and_adaptive_follows_the_rate():
    hybrid = DgrConfig(strategy="hybrid", threshold=0.5, spike=0.9, interval=3)
    assert [step_bar(hybrid, s, 0.0) for s in range(4)] == [0.5, 0.9, 0.9, 0.5]
    adaptive = DgrConfig(strategy="adaptive", target_rate=0.25, adapt_rate=0.1)
    assert step_bar(adaptive, 7, 0.42) == 0.42
    assert next_theta(adaptive, 0.5, 4, 4) == pytest.approx(0.575)
    assert next_theta(adaptive, 0.5, 0, 4) == pytest.approx(0.475)
    assert next_theta(hybrid, 0.5, 4, 4) == 0.5


def test_vote_weights_slots_by_similarity():
    config = DgrConfig(vote_temperature=0.1, strength=1.0, min_similarity=0.2)
    weights = vote([(3, 0.9), (4, 0.8), (3, 0.85), (5, 0.1)], config, first_slot=3, slots=6)
    assert len(weights) == 3
    assert sum(weights) == pytest.approx(1.0)
    assert weights[0] > weights[1] > 0 and weights[2] == 0.0  # slot 5 below min_similarity
    assert vote([], config, 3, 6) == [0.0, 0.0, 0.0]


def test_bad_config():
    with pytest.raises(RuvdllmError, match="unknown"):
        DgrConfig(strategy="random")
    with pytest.raises(RuvdllmError, match="budget"):
        DgrConfig(budget=-1)
