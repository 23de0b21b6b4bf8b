"""DAF as a Flower strategy, driven by Flower's own server loop (`Server.fit_round`) with
in-process clients. Needs `flwr` (extra `flower`), which lives in an environment of its own:
see docs/hub.md "Flower". Skipped where flwr is not installed."""

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server.client_manager import SimpleClientManager  # noqa: E402
from flwr.server.client_proxy import ClientProxy  # noqa: E402
from flwr.server.server import Server  # noqa: E402

from federation_hub.aggregate.lora import LoraPair, LowRankSum  # noqa: E402
from federation_hub.flower import DafStrategy, from_ndarrays, to_ndarrays  # noqa: E402

LINEARS = ["layers.0.q_proj", "layers.0.v_proj"]
SHAPES = {"layers.0.q_proj": (4, 16, 16), "layers.0.v_proj": (4, 16, 8)}  # rank, in, out


class LocalClient(ClientProxy):
    """A Flower client that 'trains' by returning its fixed update and metrics."""

    def __init__(self, cid, pairs, samples, before, after):
        super().__init__(cid)
        self.pairs, self.samples, self.before, self.after = pairs, samples, before, after
        self.configs = []

    def fit(self, ins, timeout, group_id):
        self.configs.append(dict(ins.config))
        metrics = {"perplexity_before": self.before, "perplexity_after": self.after}
        return FitRes(
            Status(Code.OK, ""),
            ndarrays_to_parameters(to_ndarrays(self.pairs, LINEARS)),
            self.samples,
            metrics,
        )

    def get_properties(self, ins, timeout, group_id):
        raise RuntimeError("not used")

    def get_parameters(self, ins, timeout, group_id):
        raise RuntimeError("not used")

    def evaluate(self, ins, timeout, group_id):
        raise RuntimeError("not used")

    def reconnect(self, ins, timeout, group_id):
        raise RuntimeError("not used")


def pairs(rng):
    return {
        n: LoraPair(
            rng.standard_normal((r, i)).astype(np.float32), rng.standard_normal((o, r)).astype(np.float32)
        )
        for n, (r, i, o) in SHAPES.items()
    }


@pytest.mark.parametrize("group, strategy", [("coarse", "daf"), ("domain", "daf"), ("coarse", "fedprox")])
def test_a_flower_round_aggregates_exactly(group, strategy):
    rng = np.random.default_rng(0)
    clients = [
        LocalClient(f"c{i}", pairs(rng), samples=10 * (i + 1), before=20.0, after=19.0 - i) for i in range(4)
    ]
    manager = SimpleClientManager()
    for client in clients:
        manager.register(client)
    daf = DafStrategy(
        LINEARS,
        SHAPES,
        group,
        strategy=strategy,
        release_rank=0,
        initial_parameters=Parameters([], "numpy.ndarray"),
    )
    server = Server(client_manager=manager, strategy=daf)
    parameters, metrics, (results, failures) = server.fit_round(server_round=1, timeout=None)
    assert not failures and metrics["contributors"] == 4
    released = from_ndarrays(parameters_to_ndarrays(parameters), LINEARS)
    if group == "coarse":
        weights = np.array([c.samples for c in clients], float)
    else:  # softmax over relative improvement, temperature 0.05
        weights = np.exp(np.array([(20 - c.after) / 20 for c in clients]) / 0.05)
    weights /= weights.sum()
    for name, (_, in_f, out_f) in SHAPES.items():
        expected = LowRankSum(out_f, in_f)
        for client, w in zip(clients, weights, strict=True):
            expected.add(client.pairs[name], w)
        np.testing.assert_allclose(released[name].product(), expected.dense(), atol=1e-4)
    assert clients[0].configs[0]["timestep_group"] == group
    if strategy == "fedprox":
        assert clients[0].configs[0]["proximal_mu"] == 0.01
