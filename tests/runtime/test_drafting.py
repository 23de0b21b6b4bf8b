"""The verified sampler's block-sizing rule and confidence cut, as pure functions."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from runtime.drafting import FULL_BLOCK, Drafting, confident_prefix, draft_count, row_confidence

kept_lists = st.lists(st.integers(0, 20), max_size=12)
blocks = st.integers(1, 17)
windows = st.integers(1, 6)


@given(kept_lists, blocks, windows)
def test_the_count_stays_in_the_block(recent, block, window):
    count = draft_count(recent, block, Drafting(window=window, pause_below=0.0))
    assert count == 0 if block < 2 else 1 <= count <= block - 1
    paused = draft_count(recent, block, Drafting(window=window))  # 0 too while the pause holds
    assert paused == 0 if block < 2 else 0 <= paused <= block - 1


@given(kept_lists, blocks)
def test_the_full_block_and_a_fresh_start_draft_everything(recent, block):
    most = max(0, block - 1)
    assert draft_count(recent, block, FULL_BLOCK) == most
    assert draft_count([], block, Drafting()) == most  # a new drafter gets the benefit of the doubt


@given(kept_lists, st.integers(2, 17), windows, st.integers(0, 5))
def test_more_kept_never_drafts_less(recent, block, window, extra):
    more = [k + extra for k in recent]
    rule = Drafting(window=window)
    assert draft_count(more, block, rule) >= draft_count(recent, block, rule)


@given(st.lists(st.integers(0, 20), min_size=6, max_size=12), st.integers(2, 17), windows)
def test_only_the_window_counts(recent, block, window):
    rule = Drafting(window=window)  # at most 6: every list here fills it
    assert draft_count([9, 9, 9, *recent], block, rule) == draft_count([0, *recent], block, rule)


def test_golden_counts():
    rule = Drafting(window=4, pause_below=0.0)  # the sizing alone (the pause: below)
    assert draft_count([0, 0, 0, 0], 8, rule) == 1  # a drafter that is never right: one draft
    assert draft_count([0, 1, 0, 0], 8, rule) == 1  # mean 0.25
    assert draft_count([1, 1, 1, 1], 8, rule) == 2  # whole blocks of one kept: try two
    assert draft_count([2, 3, 3, 3], 8, rule) == 3  # mean 2.75
    assert draft_count([7, 7, 7, 7], 8, rule) == 7  # capped at the block's b - 1
    assert draft_count([7, 7, 7, 7, 0, 0, 0, 0], 8, rule) == 1  # the old forwards left the window
    assert draft_count([5], 4, rule) == 3
    assert draft_count([5], 1, rule) == 0


@given(st.lists(st.floats(0.0, 1.0), max_size=10), st.floats(0.0, 1.0))
def test_the_confident_prefix_is_the_longest_run_at_or_above_the_floor(confidences, floor):
    n = confident_prefix(confidences, floor)
    assert all(c >= floor for c in confidences[:n])
    assert n == len(confidences) or confidences[n] < floor
    assert confident_prefix(confidences, 0.0) == len(confidences)


@given(
    st.lists(st.floats(-20.0, 20.0), min_size=2, max_size=8),
    st.floats(0.0, 30.0),
    st.integers(0, 7),
)
def test_row_confidence_is_the_top_non_mask_probability(logits, rest, mask_at):
    logits = sorted(logits, reverse=True)
    ids = list(range(100, 100 + len(logits)))
    mask_id = ids[mask_at % len(ids)]
    # the whole vocabulary: these candidates plus some mass elsewhere
    logsumexp = math.log(sum(math.exp(x) for x in logits) + math.exp(rest) - 1.0 + 1e-300)
    top = next(x for i, x in zip(ids, logits, strict=True) if i != mask_id)
    got = row_confidence(ids, logits, logsumexp, mask_id)
    assert 0.0 <= got <= 1.0
    assert math.isclose(got, min(1.0, math.exp(top - logsumexp)), rel_tol=1e-9)


def test_a_row_of_only_the_mask_is_not_confident():
    assert row_confidence([4], [3.0], 3.0, 4) == 0.0


@given(kept_lists, st.integers(2, 17), st.floats(0.0, 3.0), st.integers(1, 6), st.integers(0, 8))
def test_the_pause_drafts_nothing_only_between_probes_of_a_poor_drafter(recent, block, below, every, idle):
    rule = Drafting(pause_below=below, probe_every=every)
    count = draft_count(recent, block, rule, idle)
    window = recent[-rule.window :]
    poor = bool(window) and sum(window) / len(window) < below
    assert (count == 0) == (poor and idle < every)
    if count:
        assert count == draft_count(
            recent, block, Drafting(pause_below=0.0), idle
        )  # otherwise the rule as before


def test_golden_pause():
    rule = Drafting(pause_below=0.5, probe_every=4)
    assert draft_count([0, 0, 1, 0], 8, rule, idle=0) == 0  # mean 0.25: paused
    assert draft_count([0, 0, 1, 0], 8, rule, idle=4) == 1  # a probe
    assert draft_count([0, 1, 1, 0], 8, rule, idle=0) == 1  # mean 0.5: drafting
    assert draft_count([], 8, rule, idle=0) == 7  # nothing measured yet


def test_golden_no_block_beside_drafts():
    rule = Drafting(pause_below=0.0)
    assert draft_count([2, 2, 2, 2], 8, rule, checking=3) == 0  # a forward checking drafts: no block
    assert draft_count([2, 2, 2, 2], 8, rule, checking=0) == 3
    beside = Drafting(pause_below=0.0, block_beside_drafts=True)
    assert draft_count([2, 2, 2, 2], 8, beside, checking=3) == 3
