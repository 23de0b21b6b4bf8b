import random
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from runtime.backend import StepOutput
from runtime.denoise import (
    Proposal,
    above_threshold,
    choose_positions,
    entropy_bounded,
    most_confident,
    propose,
    ranked,
)
from runtime.settings import ORDERS, GenerationSettings


def output(rows):
    """rows: [(ids, logits, logsumexp)]"""
    return StepOutput(
        topk_ids=[r[0] for r in rows],
        topk_logits=[r[1] for r in rows],
        logsumexp=[r[2] for r in rows],
        entropy=[1.0] * len(rows),
        query=lambda r: [0.0],
    )


def test_most_confident_breaks_ties_by_position():
    proposals = [Proposal(3, 1, 0.5), Proposal(1, 2, 0.5), Proposal(2, 3, 0.9), Proposal(0, 4, 0.1)]
    assert [p.position for p in most_confident(proposals, 2)] == [2, 1]
    assert [p.position for p in most_confident(proposals, 3)] == [2, 1, 3]


def test_threshold_commits_the_leading_run_above_or_the_first():
    proposals = [Proposal(0, 1, 0.95), Proposal(1, 2, 0.9), Proposal(2, 3, 0.2)]  # in confidence order
    assert [p.position for p in above_threshold(proposals, 0.9)] == [0, 1]
    assert [p.position for p in above_threshold(proposals, 0.99)] == [0]


def test_mask_token_is_never_proposed():
    mask = 9
    out = output([([9, 4, 5], [5.0, 1.0, 0.0], 5.1), ([2, 9], [3.0, 2.0], 3.5)])
    for temperature in (0.0, 1.0, 10.0):
        settings = GenerationSettings(temperature=temperature)
        for seed in range(20):
            proposals = propose([0, 1], out, mask, settings, random.Random(seed))
            assert [p.token for p in proposals][0] in (4, 5) and proposals[1].token == 2


def test_confidence_is_full_vocabulary_probability():
    import math

    out = output([([4, 5], [math.log(0.6), math.log(0.3)], 0.0)])
    (p,) = propose([0], out, 99, GenerationSettings(), random.Random(0))
    assert p.token == 4 and abs(p.confidence - 0.6) < 1e-12


# --- which positions a step commits ---------------------------------------------------------------

proposal_lists = st.lists(
    st.tuples(st.sampled_from([0.05, 0.3, 0.3, 0.8, 0.95]), st.floats(0.0, 6.0)), min_size=1, max_size=10
).map(lambda rows: [Proposal(i, 100 + i, c, h) for i, (c, h) in enumerate(rows)])


@given(proposals=proposal_lists, bound=st.floats(0.0, 20.0), order=st.sampled_from(ORDERS))
def test_entropy_bounded_commits_the_longest_prefix_within_the_bound(proposals, bound, order):
    ranking = ranked(proposals, order)
    chosen = entropy_bounded(ranking, bound)

    def excess(prefix):
        return sum(p.entropy for p in prefix) - max(p.entropy for p in prefix)

    assert chosen == ranking[: len(chosen)] and len(chosen) >= 1  # a prefix, never empty
    assert excess(chosen) <= bound or len(chosen) == 1
    if len(chosen) < len(ranking):  # the longest: one more would break the bound
        assert excess(ranking[: len(chosen) + 1]) > bound


def test_entropy_bounded_extremes():
    proposals = [Proposal(0, 1, 0.9, 2.0), Proposal(1, 2, 0.8, 0.0), Proposal(2, 3, 0.1, 3.0)]
    assert [p.position for p in entropy_bounded(proposals, 0.0)] == [0, 1]  # zero entropy is free
    assert [p.position for p in entropy_bounded(proposals, 1.9)] == [0, 1]
    assert [p.position for p in entropy_bounded(proposals, 2.0)] == [0, 1, 2]  # 5 - 3 = 2
    assert [p.position for p in entropy_bounded(proposals[2:], 0.0)] == [2]  # the first always


@given(proposals=proposal_lists)
def test_orders(proposals):
    by_confidence = ranked(proposals, "confidence")
    assert [(-p.confidence, p.position) for p in by_confidence] == sorted(
        (-p.confidence, p.position) for p in proposals
    )
    assert [p.position for p in ranked(proposals, "left-to-right")] == sorted(p.position for p in proposals)


@given(proposals=proposal_lists, threshold=st.sampled_from([0.2, 0.5, 0.9, 1.0]))
def test_threshold_in_either_order(proposals, threshold):
    """In confidence order: every proposal above the threshold (Fast-dLLM), at least the best. Left
    to right: the run of leading positions above it, at least the leftmost."""
    settings = GenerationSettings(decoding="threshold", threshold=threshold, order="confidence")
    chosen = choose_positions(proposals, settings, 0)
    above = [p for p in proposals if p.confidence >= threshold]
    assert sorted(p.position for p in chosen) == sorted(
        p.position for p in above or most_confident(proposals, 1)
    )
    left = choose_positions(proposals, replace(settings, order="left-to-right"), 0)
    positions = [p.position for p in left]
    assert positions == list(range(len(positions))) and positions  # masked 0..n-1: a leading run
    assert all(p.confidence >= threshold for p in left) or len(left) == 1


def test_low_confidence_takes_the_schedule_count_in_order():
    proposals = [Proposal(0, 1, 0.2, 1.0), Proposal(1, 2, 0.9, 1.0), Proposal(2, 3, 0.5, 1.0)]
    settings = GenerationSettings(order="confidence")
    assert [p.position for p in choose_positions(proposals, settings, 2)] == [1, 2]
    ltr = replace(settings, order="left-to-right")
    assert [p.position for p in choose_positions(proposals, ltr, 2)] == [0, 1]


def test_proposals_carry_the_rows_entropy():
    out = output([([4, 5], [1.0, 0.0], 1.5), ([6, 7], [2.0, 0.0], 2.2)])
    out = replace(out, entropy=[0.25, 1.75])
    proposals = propose([0, 1], out, 99, GenerationSettings(), random.Random(0))
    assert [p.entropy for p in proposals] == [0.25, 1.75]
