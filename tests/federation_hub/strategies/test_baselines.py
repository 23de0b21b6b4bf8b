import numpy as np

from federation_hub.strategies import ContributionMeta
from federation_hub.strategies.baselines import FedAvg, FedProx, proximal_gradient


def test_fedavg_weighs_by_samples_and_fedprox_aggregates_the_same():
    metas = [ContributionMeta(f"u{i}", f"c{i}", s, 2.0, 1.0) for i, s in enumerate([10, 30, 60])]
    rng = np.random.default_rng(0)
    fedavg = FedAvg().select(metas, None, rng)
    np.testing.assert_allclose(fedavg.weights, [0.1, 0.3, 0.6])
    np.testing.assert_array_equal(FedProx(proximal_mu=0.5).select(metas, None, rng).weights, fedavg.weights)
    assert FedProx(proximal_mu=0.5).client_config() == {"proximal_mu": 0.5}
    assert FedAvg(min_contributors=4).select(metas, None, rng).withheld


def test_proximal_gradient():
    np.testing.assert_allclose(
        proximal_gradient(np.array([1.0, 2.0]), np.array([0.0, 4.0]), 0.1), [0.1, -0.2]
    )
