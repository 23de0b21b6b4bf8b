import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation_hub.aggregate.lora import (
    LoraPair,
    LowRankSum,
    fold_error_bound,
    frobenius_norm_sq,
    scale_pair,
    update_norm,
)


def random_pair(rng, out_f, in_f, rank, scale=1.0):
    return LoraPair(
        a=(rng.standard_normal((rank, in_f)) * scale).astype(np.float32),
        b=(rng.standard_normal((out_f, rank)) * scale).astype(np.float32),
    )


shapes = st.tuples(
    st.integers(1, 12), st.integers(1, 12), st.integers(1, 4), st.integers(1, 8)
)  # out, in, rank, n


def fold_tolerance(pairs, weights, flush_rank: int) -> np.ndarray:
    return fold_error_bound(zip(pairs, weights, strict=True), flush_rank)


folds = st.tuples(
    st.integers(1, 40), st.integers(1, 40), st.integers(1, 8), st.integers(1, 40)
)  # out, in, rank, n: from all-stacked to well past the dense switch


@settings(max_examples=80, deadline=None)
@given(
    folds,
    st.integers(0, 2**31 - 1),
    st.integers(1, 64),
    st.floats(0.0, 6.0),
    st.sampled_from([np.float16, np.float32, np.float64]),
)
def test_dense_sum_is_the_float64_sum_within_the_stated_bound(dims, seed, flush, spread, dtype):
    """Products folded in float32, summed in float64: every entry within lora.py's bound of the
    float64 reference, with weights spread over up to 10^±3 (a softmax's range), for factors as
    they arrive (float16, float32) and as a merged sum holds them (float64)."""
    out_f, in_f, rank, n = dims
    rng = np.random.default_rng(seed)
    pairs = [random_pair(rng, out_f, in_f, rank) for _ in range(n)]
    pairs = [LoraPair(a=p.a.astype(dtype), b=p.b.astype(dtype)) for p in pairs]
    weights = 10.0 ** rng.uniform(-spread / 2, spread / 2, n) * rng.choice([-1.0, 1.0], n)
    total = LowRankSum(out_f, in_f, flush_rank=flush)
    for pair, w in zip(pairs, weights, strict=True):
        total.add(pair, w)
    expected = sum(w * p.product() for p, w in zip(pairs, weights, strict=True))
    assert np.all(np.abs(total.dense() - expected) <= fold_tolerance(pairs, weights, flush))


@settings(max_examples=60, deadline=None)
@given(folds, st.integers(0, 2**31 - 1), st.integers(1, 8))
def test_release_is_eckart_young_of_the_float64_sum_within_the_stated_bound(dims, seed, k):
    """The released rank-k factors are within 2·||bound||_F of the float64 sum's best rank-k
    approximation (plus the float32 rounding of the published factors), and the exact-rank
    release reproduces the float64 sum within the bound."""
    out_f, in_f, rank, n = dims
    rng = np.random.default_rng(seed)
    pairs = [random_pair(rng, out_f, in_f, rank) for _ in range(n)]
    weights = rng.random(n) + 0.1
    expected = sum(w * p.product() for p, w in zip(pairs, weights, strict=True))
    slack = 2 * np.linalg.norm(fold_tolerance(pairs, weights, 128)) + 1e-6 * np.linalg.norm(expected)

    def folded() -> LowRankSum:
        total = LowRankSum(out_f, in_f)
        for pair, w in zip(pairs, weights, strict=True):
            total.add(pair, w)
        return total

    singular = np.linalg.svd(expected, compute_uv=False)
    best = np.sqrt(np.sum(singular[k:] ** 2))
    assert np.linalg.norm(expected - folded().factorize(k).pair.product()) <= best + slack
    exact = folded().factorize(None).pair.product()
    assert np.linalg.norm(expected - exact) <= slack + 1e-6 * singular[0] * np.sqrt(min(out_f, in_f))


def test_folding_at_the_benchmark_shape_matches_float64_to_a_millionth():
    """300 rank-8 updates of a 576×576 linear (the load benchmark's q_proj): the float32-folded
    sum is within 10⁻⁶ of the float64 sum (relative, Frobenius), and its rank-8 release leaves
    the same residual as the float64 sum's own best rank-8 approximation to 10⁻⁶."""
    rng = np.random.default_rng(5)
    pairs = [random_pair(rng, 576, 576, 8, scale=0.05) for _ in range(300)]
    weights = rng.random(300) + 0.5
    total = LowRankSum(576, 576)
    expected = np.zeros((576, 576))
    for pair, w in zip(pairs, weights, strict=True):
        total.add(pair, w)
        expected += w * pair.product()
    assert total.is_dense
    scale = np.linalg.norm(expected)
    assert np.linalg.norm(total.dense() - expected) <= 1e-6 * scale
    singular = np.linalg.svd(expected, compute_uv=False)
    best = np.sqrt(np.sum(singular[8:] ** 2))
    released = total.factorize(8)
    assert abs(np.linalg.norm(expected - released.pair.product()) - best) <= 1e-6 * scale
    assert released.residual == pytest.approx(best / scale, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1))
def test_exact_release_reconstructs_the_sum_and_truncation_is_eckart_young(dims, seed):
    out_f, in_f, rank, n = dims
    rng = np.random.default_rng(seed)
    total = LowRankSum(out_f, in_f)
    for _ in range(n):
        total.add(random_pair(rng, out_f, in_f, rank), float(rng.random()) + 0.1)
    dense = total.dense().copy() if total.is_dense else total.stacked().product()
    exact = total.factorize(None)
    np.testing.assert_allclose(exact.pair.product(), dense, atol=1e-4 * (1 + np.abs(dense).max()))
    assert exact.residual < 1e-3
    k = max(1, min(out_f, in_f) // 2)
    truncated = total.factorize(k)
    singular = np.linalg.svd(dense, compute_uv=False)
    best_error = np.sqrt(np.sum(singular[k:] ** 2))
    got_error = np.linalg.norm(dense - truncated.pair.product())
    assert got_error <= best_error * (1 + 1e-3) + 1e-4
    assert truncated.pair.a.shape == (k, in_f) and truncated.pair.b.shape == (out_f, k)


def test_stacked_and_dense_paths_agree():
    rng = np.random.default_rng(0)
    pairs = [random_pair(rng, 24, 20, 4) for _ in range(12)]  # 48·44 > 24·20: goes dense on the way
    low = LowRankSum(24, 20)
    for p in pairs[:2]:
        low.add(p, 0.5)
    assert not low.is_dense
    for p in pairs[2:]:
        low.add(p, 0.5)
    assert low.is_dense
    exact = 0.5 * sum(p.product() for p in pairs)
    assert np.all(np.abs(low.dense() - exact) <= fold_tolerance(pairs, [0.5] * len(pairs), 128))


def test_identical_updates_average_to_the_update():
    rng = np.random.default_rng(1)
    pair = random_pair(rng, 16, 12, 3)
    total = LowRankSum(16, 12)
    for _ in range(7):
        total.add(pair, 1 / 7)
    released = total.factorize(3)
    np.testing.assert_allclose(released.pair.product(), pair.product(), rtol=1e-4, atol=1e-5)
    assert released.residual < 1e-5


@pytest.mark.parametrize("dense", [False, True])
def test_a_release_rank_past_the_linear_is_clamped(dense):
    """release_rank 1000 on an 8×8 linear gave [1000, 8] and [8, 1000] factors, all but 8 rows zero
    (a 128×128 round with 65536 made a 64 MiB release)."""
    rng = np.random.default_rng(3)
    total = LowRankSum(8, 6)
    for _ in range(5 if dense else 1):  # 5 × rank 2 stacked is past 8×6: dense
        total.add(random_pair(rng, 8, 6, 2), 0.2)
    released = total.factorize(1000)
    assert released.pair.a.shape == (6, 6) and released.pair.b.shape == (8, 6)
    np.testing.assert_allclose(released.pair.product(), total.dense(), atol=1e-5)
    assert total.factorize(4).pair.a.shape == (4, 6)  # below it, the rank asked for


def test_averaging_factors_separately_is_inexact():
    # why the hub never does it: mean(B) @ mean(A) != mean(B @ A)
    rng = np.random.default_rng(2)
    p, q = random_pair(rng, 8, 8, 2), random_pair(rng, 8, 8, 2)
    naive = ((p.b + q.b) / 2) @ ((p.a + q.a) / 2)
    exact = (p.product() + q.product()) / 2
    assert np.linalg.norm(naive - exact) > 0.1 * np.linalg.norm(exact)
    total = LowRankSum(8, 8)
    total.add(p, 0.5)
    total.add(q, 0.5)
    np.testing.assert_allclose(total.factorize(None).pair.product(), exact, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1), st.floats(0.01, 10))
def test_norm_from_factors_matches_the_product(dims, seed, factor):
    out_f, in_f, rank, _ = dims
    pair = random_pair(np.random.default_rng(seed), out_f, in_f, rank)
    assert np.isclose(frobenius_norm_sq(pair), np.linalg.norm(pair.product()) ** 2, rtol=1e-6)
    scaled = scale_pair(pair, factor)
    assert np.isclose(update_norm({"x": scaled}), factor * update_norm({"x": pair}), rtol=1e-5)


def test_wrong_shape_is_refused():
    total = LowRankSum(4, 5)
    try:
        total.add(random_pair(np.random.default_rng(0), 5, 4, 2))
    except ValueError as exc:
        assert "does not fit" in str(exc)
    else:
        raise AssertionError("a delta of the wrong shape was summed")


@pytest.mark.parametrize("out_f, in_f", [(48, 40), (40, 48)])
def test_dense_truncation_from_the_gram_matrix_is_eckart_young(out_f, in_f):
    rng = np.random.default_rng(3)
    total = LowRankSum(out_f, in_f)
    for _ in range(30):  # stacked rank 90 > dense: the dense route
        total.add(random_pair(rng, out_f, in_f, 3), float(rng.random()))
    assert total.is_dense
    dense = total.dense().copy()
    released = total.factorize(4)  # 4 < min/4: top eigenvectors of the smaller Gram matrix
    singular = np.linalg.svd(dense, compute_uv=False)
    best = np.sqrt(np.sum(singular[4:] ** 2))
    assert np.linalg.norm(dense - released.pair.product()) == pytest.approx(best, rel=1e-6)
    assert released.residual == pytest.approx(best / np.linalg.norm(dense), rel=1e-6)
    assert released.pair.a.shape == (4, in_f) and released.pair.b.shape == (out_f, 4)
