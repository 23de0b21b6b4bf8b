"""The contract that lets the hub sum as updates arrive (aggregate/running.py): whatever a
strategy selects, the weights of the contributions it keeps are proportional to exp(log_weight),
a number from each contribution's own metrics; a strategy that does not cluster keeps exactly
those whose log weight is above -inf."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from federation_hub.privacy.dp import DifferentiallyPrivate
from federation_hub.strategies import STRATEGIES, ContributionMeta, make_strategy
from federation_hub.strategies.daf import Hybrid, QualityWeighted

POLICIES = [
    *(make_strategy(name, "coarse") for name in STRATEGIES),
    make_strategy("selective", "coarse", {"method": "dbscan"}),
    make_strategy("selective", "coarse", {"method": "hierarchical"}),
    QualityWeighted(temperature=0.001),  # tiny temperatures: exp() would overflow without logs
    Hybrid(temperature=0.5, min_contributors=1),
    *(DifferentiallyPrivate(make_strategy(name, "coarse")) for name in ("weighted", "quality", "hybrid")),
]

contributions = st.lists(
    st.tuples(
        st.integers(1, 10**6),  # samples
        st.floats(1.0, 1e4),  # perplexity before
        st.floats(0.5, 2.0),  # after / before
        st.integers(0, 2),  # which of three directions its update points in
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(contributions, st.sampled_from(POLICIES), st.integers(0, 2**32 - 1))
def test_kept_weights_are_proportional_to_exp_log_weight(items, strategy, seed):
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((3, 32))
    metas = [ContributionMeta(f"u{i}", f"t/c{i}", s, b, b * r) for i, (s, b, r, _) in enumerate(items)]
    features = np.vstack([directions[d] + 0.05 * rng.standard_normal(32) for *_, d in items])
    selection = strategy.select(
        metas, features if strategy.needs_features else None, np.random.default_rng(seed)
    )
    log_weights = np.array([strategy.log_weight(m) for m in metas])
    if selection.withheld:
        return
    kept = selection.weights > 0
    assert np.all(log_weights[kept] > -math.inf)
    if not strategy.needs_features:
        np.testing.assert_array_equal(kept, log_weights > -math.inf)
    # w_i = exp(lw_i - log Z) for one Z over the kept ones
    log_z = log_weights[kept] - np.log(selection.weights[kept])
    np.testing.assert_allclose(log_z, log_z[0], rtol=0, atol=1e-9)
