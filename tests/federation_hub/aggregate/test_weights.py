import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from federation_hub.aggregate.weights import combine, quality_weights, relative_improvement, sample_weights

floats = st.floats(0.0, 1e6, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=50))
def test_sample_weights_are_proportional_and_sum_to_one(samples):
    w = sample_weights(np.array(samples))
    assert np.isclose(w.sum(), 1.0)
    np.testing.assert_allclose(w * sum(samples), samples, rtol=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=30), st.floats(0.01, 1.0))
def test_quality_weights_favour_improvement_and_drop_harm(improvement, temperature):
    improvement = np.array(improvement)
    w = quality_weights(improvement, temperature)
    assert (w[improvement <= 0] == 0).all()
    if (improvement > 0).any():
        assert np.isclose(w.sum(), 1.0)
        order = np.argsort(improvement)
        helpful = order[improvement[order] > 0]
        assert (np.diff(w[helpful]) >= -1e-12).all()  # monotone in improvement
    else:
        assert w.sum() == 0


def test_quality_weights_never_overflow():
    """A near-zero temperature (1e-320 reached here from a round's parameters) overflowed
    gain / temperature: NaN weights, and the round withheld for want of improving updates."""
    with np.errstate(all="raise"):  # no overflow, not even one numpy would only warn about
        w = quality_weights(np.array([0.1, 0.2, -0.1, 0.2]), 1e-320)
    np.testing.assert_array_equal(w, [0.0, 0.5, 0.0, 0.5])  # an argmax, ties shared


def test_relative_improvement():
    np.testing.assert_allclose(
        relative_improvement(np.array([10.0, 20.0]), np.array([9.0, 22.0])), [0.1, -0.1]
    )


def test_combine_renormalises():
    w = combine(np.array([0.5, 0.5, 0.0]), np.array([0.2, 0.6, 0.2]))
    np.testing.assert_allclose(w, [0.25, 0.75, 0.0])
