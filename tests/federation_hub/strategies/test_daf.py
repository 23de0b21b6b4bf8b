import numpy as np
import pytest

from federation_hub.strategies import ContributionMeta, make_strategy
from federation_hub.strategies.daf import Conservative, Hybrid, QualityWeighted, Selective, WeightedAverage


def metas(samples, before=None, after=None):
    n = len(samples)
    before = before or [10.0] * n
    after = after or [9.0] * n
    return [
        ContributionMeta(f"u{i}", f"t/c{i}", s, b, a)
        for i, (s, b, a) in enumerate(zip(samples, before, after, strict=True))
    ]


def camps(majority, minority, rng=None):
    rng = rng or np.random.default_rng(0)
    d1, d2 = rng.standard_normal(64), rng.standard_normal(64)
    rows = [d1 + 0.05 * rng.standard_normal(64) for _ in range(majority)] + [
        d2 + 0.05 * rng.standard_normal(64) for _ in range(minority)
    ]
    return np.vstack(rows)


def test_daf_picks_a_policy_per_timestep_group():
    assert isinstance(make_strategy("daf", "coarse"), WeightedAverage)
    assert isinstance(make_strategy("daf", "domain"), QualityWeighted)
    assert isinstance(make_strategy("daf", "fine"), Conservative)
    with pytest.raises(ValueError, match="no policy"):
        make_strategy("daf", "middle")
    with pytest.raises(ValueError, match="use one of"):
        make_strategy("fedsomething", "coarse")
    with pytest.raises(ValueError, match="no parameter"):
        make_strategy("fedprox", "coarse", {"mu": 0.1})
    assert make_strategy("fedprox", "coarse", {"proximal_mu": 0.1}).client_config() == {"proximal_mu": 0.1}
    bad = [
        ("quality", {"temperature": 0}),
        ("quality", {"temperature": 1e-320}),  # accepted: gain / temperature overflowed, weights NaN
        ("hybrid", {"temperature": 1e-9}),
        ("quality", {"temperature": "hot"}),
        ("selective", {"clusters": 0}),
        ("conservative", {"min_contributors": 0}),
        ("fedprox", {"proximal_mu": -1}),
        ("hybrid", {"min_contributors": 2.5}),
    ]
    for name, params in bad:
        with pytest.raises(ValueError):
            make_strategy(name, "coarse", params)


def test_coarse_weighs_by_samples():
    sel = WeightedAverage().select(metas([1, 3]), None, np.random.default_rng(0))
    np.testing.assert_allclose(sel.weights, [0.25, 0.75])


def test_domain_is_quality_weighted_and_drops_harm():
    sel = QualityWeighted(temperature=0.05).select(
        metas([1, 1, 1], before=[10, 10, 10], after=[9, 8, 11]), None, np.random.default_rng(0)
    )
    assert sel.weights[2] == 0
    assert sel.weights[1] > sel.weights[0] > 0
    assert np.isclose(sel.weights.sum(), 1)
    none = QualityWeighted(min_contributors=1).select(
        metas([1], after=[12.0]), None, np.random.default_rng(0)
    )
    assert none.withheld and "improved" in none.reason


def test_fine_is_conservative():
    rng = np.random.default_rng(0)
    sel = Conservative(min_contributors=3).select(metas([1] * 7), camps(4, 3), rng)
    np.testing.assert_array_equal(sel.weights > 0, [True] * 4 + [False] * 3)
    scattered = np.random.default_rng(5).standard_normal((5, 64))  # five unrelated directions
    assert Conservative(min_contributors=3).select(metas([1] * 5), scattered, rng).withheld
    assert Conservative(min_contributors=3).select(metas([1] * 2), camps(2, 0), rng).withheld


@pytest.mark.parametrize("method", ["kmeans", "dbscan", "hierarchical"])
def test_selective_keeps_the_largest_cluster(method):
    sel = Selective(method=method, min_contributors=2).select(
        metas([1] * 8), camps(5, 3), np.random.default_rng(0)
    )
    np.testing.assert_array_equal(sel.weights > 0, [True] * 5 + [False] * 3)
    with pytest.raises(ValueError, match="clustering method"):
        Selective(method="spectral")


def test_hybrid_combines_agreement_samples_and_quality():
    m = metas([1, 2, 1, 1, 1, 1], before=[10] * 6, after=[9, 9, 9.5, 9, 9, 9])
    sel = Hybrid(min_contributors=3).select(m, camps(4, 2), np.random.default_rng(0))
    w = sel.weights
    assert (w[4:] == 0).all() and (w[:4] > 0).all()
    assert w[1] > w[0] > w[2]  # more samples > same > less improvement
