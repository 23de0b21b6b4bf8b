import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.sampling import candidate_probs, choose_token, confidence, draw, drop_token, nucleus


def descending(values):
    return sorted(values, reverse=True)


probs_lists = st.lists(st.floats(0.001, 1.0), min_size=1, max_size=20).map(
    lambda xs: descending([x / sum(xs) for x in xs])
)


@given(probs=probs_lists, top_p=st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_prefix_reaching_p(probs, top_p):
    kept = nucleus(probs, top_p)
    assert math.isclose(sum(kept), 1.0, rel_tol=1e-9)
    if top_p < 1.0:
        n = len(kept)
        mass = sum(probs[:n])
        assert mass >= top_p - 1e-9 or n == len(probs)
        assert n == 1 or sum(probs[: n - 1]) < top_p  # one fewer would not reach p


@given(
    logits=st.lists(st.floats(-20, 20), min_size=1, max_size=16).map(descending),
    temperature=st.floats(0.05, 5.0),
    top_k=st.integers(0, 20),
    top_p=st.floats(0.05, 1.0),
)
def test_candidate_probs_form_a_distribution_within_top_k(logits, temperature, top_k, top_p):
    probs = candidate_probs(logits, temperature, top_k, top_p)
    assert math.isclose(sum(probs), 1.0, rel_tol=1e-9)
    assert len(probs) <= (top_k or len(logits))
    assert all(a >= b - 1e-12 for a, b in zip(probs, probs[1:], strict=False))


def test_greedy_takes_the_first_and_leaves_rng_untouched():
    rng = random.Random(5)
    state = rng.getstate()
    assert choose_token([7, 3, 9], [2.0, 1.0, 0.5], 0.0, 0, 1.0, rng) == 0
    assert rng.getstate() == state


def test_same_seed_same_choices_and_distribution_follows_logits():
    ids, logits = [1, 2, 3], [1.0, 0.0, -1.0]
    picks = [choose_token(ids, logits, 1.0, 0, 1.0, random.Random(9)) for _ in range(3)]
    assert len(set(picks)) == 1
    rng = random.Random(0)
    counts = [0, 0, 0]
    for _ in range(6000):
        counts[choose_token(ids, logits, 1.0, 0, 1.0, rng)] += 1
    expected = [math.exp(x) / sum(math.exp(y) for y in logits) for x in logits]
    for c, e in zip(counts, expected, strict=True):
        assert abs(c / 6000 - e) < 0.03


def test_top_k_one_and_tiny_top_p_are_greedy():
    rng = random.Random(1)
    for _ in range(50):
        assert choose_token([4, 5, 6], [0.1, 0.0, -0.1], 1.0, 1, 1.0, rng) == 0
        assert choose_token([4, 5, 6], [3.0, 0.0, -0.1], 1.0, 0, 0.01, rng) == 0


def test_draw_rounding_falls_back_to_last():
    class One:
        def random(self):
            return 0.9999999999

    assert draw([0.5, 0.49999], One()) == 1


def test_drop_mask_and_confidence():
    assert drop_token([3, 9, 4], [2.0, 1.5, 1.0], 9) == ([3, 4], [2.0, 1.0])
    assert confidence(1.0, 1.0) == pytest.approx(1.0)
    assert confidence(0.0, math.log(4)) == pytest.approx(0.25)
