"""Running sums: any order of adds, merges of partial sums and take-backs gives the float64
weighted sum within the fold's stated bound (aggregate/lora.py), with weights spanning hundreds of
orders of magnitude; saved and loaded, a partial sum is the same sum."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from federation_hub import codec
from federation_hub.aggregate.lora import LoraPair, fold_error_bound
from federation_hub.aggregate.running import RunningSum, log_normalizer

SHAPES = {"q": (6, 5), "v": (3, 5)}  # out, in


def update(rng, rank=2):
    return {
        name: LoraPair(
            rng.standard_normal((rank, i)).astype(np.float32),
            rng.standard_normal((o, rank)).astype(np.float32),
        )
        for name, (o, i) in SHAPES.items()
    }


def direct(updates, weights) -> dict[str, np.ndarray]:
    """The float64 reference: Σ w·(B A) with the products in float64."""
    return {
        name: sum(w * pairs[name].product() for pairs, w in zip(updates, weights, strict=True))
        for name in SHAPES
    }


def bound(updates, weights, name: str) -> np.ndarray:
    """The fold's bound over every term that went in (taken back ones too), plus what float32
    cannot hold at all: a term 10⁻³⁸ below the largest flushes to zero."""
    terms = [(pairs[name], w) for pairs, w in zip(updates, weights, strict=True)]
    return fold_error_bound(terms) + 1e-30 * np.abs(direct(updates, weights)[name]).max()


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.one_of(st.floats(-700, 700), st.just(-math.inf)), min_size=1, max_size=20),
    st.integers(1, 4),
    st.integers(0, 2**32 - 1),
)
def test_partials_merged_equal_the_direct_sum(log_weights, parts, seed):
    rng = np.random.default_rng(seed)
    updates = [update(rng, rank=int(rng.integers(1, 4))) for _ in log_weights]
    order = rng.permutation(len(updates))
    partials = [RunningSum(SHAPES) for _ in range(parts)]
    for k, i in enumerate(order):
        partials[k % parts].add(updates[i], log_weights[i])
    total = RunningSum(SHAPES)
    for p in rng.permutation(parts):
        total.merge(codec.decode_partial(codec.encode_partial(partials[p]), SHAPES))  # saved and loaded
    assert total.count == len(updates)
    lw = np.array(log_weights)
    weights = np.where(lw > -math.inf, np.exp(lw - lw.max()) if np.isfinite(lw.max()) else 0.0, 0.0)
    if weights.sum() == 0:
        return
    weights /= weights.sum()
    sums = total.normalized(log_normalizer(lw, weights))
    for name, expected in direct(updates, weights).items():
        assert np.all(np.abs(sums[name].dense() - expected) <= bound(updates, weights, name))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=2, max_size=12), st.integers(0, 2**32 - 1))
def test_taking_back_excluded_contributions_leaves_the_chosen(log_weights, seed):
    rng = np.random.default_rng(seed)
    updates = [update(rng) for _ in log_weights]
    excluded = set(rng.choice(len(updates), size=len(updates) // 2, replace=False).tolist())
    total = RunningSum(SHAPES)
    for pairs, lw in zip(updates, log_weights, strict=True):
        total.add(pairs, lw)
    for i in excluded:
        total.subtract(updates[i], log_weights[i])
    lw = np.array(log_weights)
    chosen = np.array([i not in excluded for i in range(len(updates))])
    weights = np.where(chosen, np.exp(lw - lw[chosen].max()), 0.0)
    weights /= weights.sum()
    sums = total.normalized(log_normalizer(lw, weights))
    # taking back costs precision in proportion to how much more weight is taken back than kept
    # (services/aggregation.py sums the chosen directly past a ratio of CANCELLATION): the bound
    # counts every excluded term twice, in and out, at its own weight
    g = np.exp(lw - lw[chosen].max()) / np.exp(log_normalizer(lw, weights) - lw[chosen].max())
    folded_in = [2 * g[i] if i in excluded else g[i] for i in range(len(updates))]
    for name, expected in direct(updates, weights).items():
        assert np.all(np.abs(sums[name].dense() - expected) <= bound(updates, folded_in, name))


def test_a_sum_stays_stacked_while_that_is_smaller_and_saves_either_way():
    rng = np.random.default_rng(0)
    small = RunningSum(SHAPES)
    small.add(update(rng), 0.0)
    assert small.sums["q"].stacked() is not None
    big = RunningSum(SHAPES)
    for _ in range(5):
        big.add(update(rng, rank=3), float(rng.normal()))
    assert big.sums["q"].stacked() is None  # 15 columns of 6 + 5 outgrow a 6 × 5 matrix
    for total in (small, big):
        back = codec.decode_partial(codec.encode_partial(total), SHAPES)
        assert back.ref == total.ref and back.count == total.count
        for name in SHAPES:
            np.testing.assert_array_equal(back.sums[name].dense(), total.sums[name].dense())
    empty = codec.decode_partial(codec.encode_partial(RunningSum(SHAPES)), SHAPES)
    assert empty.ref == -math.inf and empty.count == 0
