"""Loop C's merge math (runtime/learning/ewc.py), as properties: λ = 0 is the plain merge, a huge λ
keeps the old adapter, the weighted cut is optimal, the Fisher's moving average and its carrying
onto new components stay in bounds."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.learning.ewc import carry_fisher, components, ema_fisher, ewc_average, ewc_merge

finite = st.floats(-10, 10, allow_nan=False)
positive = st.floats(1e-3, 10, allow_nan=False)


def factors(rng, fan_in, fan_out, rank, scale=1.0):
    return rng.standard_normal((fan_in, rank)) * scale, rng.standard_normal((rank, fan_out)) * scale


def best_rank(matrix, rank):
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


@given(old=finite, new=finite, fisher=positive, weight=st.floats(0, 1))
def test_ewc_average_is_the_plain_average_at_lambda_zero_and_the_old_value_at_infinity(
    old, new, fisher, weight
):
    assert np.isclose(ewc_average(old, new, fisher, 0.0, weight), (1 - weight) * old + weight * new)
    assert np.isclose(ewc_average(old, new, fisher, 1e12, weight), old, atol=1e-6)
    middle = ewc_average(old, new, fisher, 1.0, weight)
    assert min(old, new) - 1e-9 <= middle <= max(old, new) + 1e-9  # a weighted average: in between


@given(seed=st.integers(0, 2**31), rank=st.integers(1, 4), micro=st.integers(1, 2), weight=st.floats(0.1, 1))
@settings(max_examples=40, deadline=None)
def test_lambda_zero_is_the_best_rank_r_approximation_of_the_plain_merge(seed, rank, micro, weight):
    rng = np.random.default_rng(seed)
    a, b = factors(rng, 12, 9, rank)
    ma, mb = factors(rng, 12, 9, micro)
    old = components(a, b)
    merged = ewc_merge(old, [(ma, mb)], rng.random(rank) * 5, 0.0, rank, weight)
    expected = best_rank(a @ b + weight * ma @ mb, rank)
    np.testing.assert_allclose(merged.delta(), expected, atol=1e-8)


@given(seed=st.integers(0, 2**31), rank=st.integers(1, 4), micro=st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_a_huge_lambda_keeps_the_old_adapter(seed, rank, micro):
    rng = np.random.default_rng(seed)
    a, b = factors(rng, 12, 9, rank)
    ma, mb = factors(rng, 12, 9, micro, scale=3.0)  # a stronger newcomer: the plain cut would drop old
    old = components(a, b)
    merged = ewc_merge(old, [(ma, mb)], 0.5 + rng.random(rank), 1e12, rank)
    np.testing.assert_allclose(merged.delta(), a @ b, atol=1e-4 * max(1.0, np.abs(a @ b).max()))


@given(seed=st.integers(0, 2**31), lam=st.floats(0.01, 100))
@settings(max_examples=150, deadline=None)
def test_the_weighted_cut_is_no_worse_than_any_other_rank_r_candidate_under_the_ewc_objective(seed, lam):
    """Checked where the objective is easy to write down: old and new in the standard basis."""
    rng = np.random.default_rng(seed)
    n, rank = 6, 2
    s = np.sort(rng.random(rank) + 0.5)[::-1]
    a, b = np.eye(n)[:, :rank] * s, np.eye(n)[:rank]  # old = diag(s) in the top-left corner
    ma, mb = factors(rng, n, n, 2)
    fisher = rng.random(rank) * 3
    merged = ewc_merge(components(a, b), [(ma, mb)], fisher, lam, rank).delta()
    omega = np.ones(n)
    omega[:rank] = np.sqrt(1 + lam * fisher)
    weights = np.outer(omega, omega)
    old, new = a @ b, a @ b + ma @ mb

    def objective(x):
        return float(((x - new) ** 2 + (weights - 1) * (x - old) ** 2).sum())

    best = objective(merged)
    candidates = [best_rank(new, rank), old, best_rank((new + old) / 2, rank)]
    for _ in range(20):  # and random rank-r perturbations of the answer: it is a minimum
        candidates.append(best_rank(merged + 0.05 * rng.standard_normal(merged.shape), rank))
    for candidate in candidates:
        assert best <= objective(candidate) + 1e-9


@given(
    previous=st.lists(positive, min_size=1, max_size=6),
    decay=st.floats(0, 0.999),
    seed=st.integers(0, 2**31),
)
def test_the_fisher_moving_average_stays_between_the_old_and_the_new(previous, decay, seed):
    previous = np.asarray(previous)
    measured = np.random.default_rng(seed).random(previous.size) * 10
    mixed = ema_fisher(previous, measured, decay)
    assert np.all(mixed >= np.minimum(previous, measured) - 1e-12)
    assert np.all(mixed <= np.maximum(previous, measured) + 1e-12)
    np.testing.assert_array_equal(ema_fisher(None, measured, decay), measured)


@given(seed=st.integers(0, 2**31), rank=st.integers(1, 4))
@settings(max_examples=40, deadline=None)
def test_the_carried_fisher_is_unchanged_on_the_same_components_and_never_grows(seed, rank):
    rng = np.random.default_rng(seed)
    a, b = factors(rng, 10, 7, rank)
    old = components(a, b)
    fisher = rng.random(rank) * 4
    np.testing.assert_allclose(carry_fisher(old, fisher, old), fisher, atol=1e-9)
    other = components(*factors(rng, 10, 7, rank))
    carried = carry_fisher(old, fisher, other)
    assert np.all(carried >= 0) and carried.sum() <= fisher.sum() + 1e-9


@given(seed=st.integers(0, 2**31), rank=st.integers(1, 4))
@settings(max_examples=30, deadline=None)
def test_components_reproduce_the_delta_and_factor_back(seed, rank):
    rng = np.random.default_rng(seed)
    a, b = factors(rng, 10, 7, rank)
    parts = components(a, b)
    np.testing.assert_allclose(parts.delta(), a @ b, atol=1e-9)
    assert np.all(np.diff(parts.s) <= 1e-12)  # descending
    fa, fb = parts.factors(rank + 1)  # padded
    np.testing.assert_allclose(fa @ fb, a @ b, atol=1e-9)
