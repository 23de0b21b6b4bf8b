import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation_hub.aggregate.lora import LoraPair
from federation_hub.privacy.dp import DifferentiallyPrivate
from federation_hub.strategies import STRATEGY_NAMES, ContributionMeta, make_strategy
from federation_hub.strategies.run import run_strategy

SHAPES = {"layers.0.q_proj": (12, 10), "layers.1.q_proj": (12, 10), "layers.0.v_proj": (6, 10)}


def update(rng, rank=2, scale=1.0):
    return {
        n: LoraPair(
            a=rng.standard_normal((rank, i)).astype(np.float32),
            b=(scale * rng.standard_normal((o, rank))).astype(np.float32),
        )
        for n, (o, i) in SHAPES.items()
    }


def run(strategy, updates, metas=None, ranks=None, seed=0):
    metas = metas or [ContributionMeta(f"u{i}", f"c{i}", 1, 10.0, 9.0) for i in range(len(updates))]
    ranks = ranks or dict.fromkeys(SHAPES)
    return run_strategy(
        strategy,
        metas,
        lambda idx: (updates[i] for i in idx),
        SHAPES,
        ranks,
        np.random.default_rng(seed),
        sketch_seed=11,
    )


@pytest.mark.parametrize("name", STRATEGY_NAMES)
@pytest.mark.parametrize("group", ["coarse", "domain", "fine"])
def test_identical_updates_aggregate_to_the_update(name, group):
    one = update(np.random.default_rng(3))
    result = run(make_strategy(name, group), [one] * 6)
    assert not result.withheld
    for n, pair in one.items():
        np.testing.assert_allclose(result.factors[n].pair.product(), pair.product(), rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_fedavg_release_is_the_weighted_mean_of_products(n, seed):
    rng = np.random.default_rng(seed)
    updates = [update(rng) for _ in range(n)]
    samples = [int(s) for s in rng.integers(1, 100, n)]
    metas = [ContributionMeta(f"u{i}", f"c{i}", s, 10.0, 9.0) for i, s in enumerate(samples)]
    result = run(make_strategy("fedavg", "coarse"), updates, metas)
    total = sum(samples)
    for name in SHAPES:
        expected = sum(s / total * u[name].product() for s, u in zip(samples, updates, strict=True))
        np.testing.assert_allclose(result.factors[name].pair.product(), expected, atol=1e-4)


def test_release_rank_truncates_and_reports_the_residual():
    rng = np.random.default_rng(4)
    updates = [update(rng) for _ in range(5)]
    result = run(make_strategy("fedavg", "coarse"), updates, ranks=dict.fromkeys(SHAPES, 2))
    for name, factorized in result.factors.items():
        assert factorized.pair.a.shape == (2, SHAPES[name][1])
        assert 0 < factorized.residual < 1


def test_dp_wrapper_clips_adds_seeded_noise_and_uses_own_weights():
    rng = np.random.default_rng(5)
    updates = [update(rng, scale=50.0) for _ in range(5)]  # far above the clip norm
    dp = DifferentiallyPrivate(make_strategy("daf", "domain"), clip_norm=1.0, noise_multiplier=0.0 + 1e-12)
    metas = [ContributionMeta(f"u{i}", f"c{i}", 1, 10.0, 9.0 if i < 4 else 11.0) for i in range(5)]
    quiet = run(dp, updates, metas)
    assert quiet.selection.contributors == 4  # the update that hurt perplexity has own weight 0
    mean_norm = np.sqrt(sum(np.linalg.norm(f.pair.product()) ** 2 for f in quiet.factors.values()))
    assert mean_norm <= 1.0 + 1e-4  # the mean of clipped updates stays within C
    noisy = DifferentiallyPrivate(make_strategy("daf", "domain"), clip_norm=1.0, noise_multiplier=2.0)
    a, b, c = (
        run(noisy, updates, metas, seed=1),
        run(noisy, updates, metas, seed=1),
        run(noisy, updates, metas, seed=2),
    )
    name = "layers.0.q_proj"
    np.testing.assert_array_equal(a.factors[name].pair.b, b.factors[name].pair.b)  # same seed, same noise
    assert not np.allclose(a.factors[name].pair.b, c.factors[name].pair.b)
    assert a.facts["noise_std"] == pytest.approx(2.0 * 1.0 / 4)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_an_empty_round_releases_nothing(name):
    params = {"min_contributors": 1} if name not in ("daf",) else {}
    result = run(make_strategy(name, "fine", params), [], metas=[])
    assert result.withheld and result.selection.reason == "no contributions"
