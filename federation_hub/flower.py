"""DAF as a Flower (`flwr`) strategy, for federations that run on Flower instead of the hub.

Optional: `pip install 'ruvdllm[flower]'` in an environment of its own — flwr pins exact minor
versions of FastAPI, Starlette, uvicorn, rich and protobuf (its own server stack) that differ from
the hub's, so it is not part of `ruvdllm[hub]` or `[dev]` (see docs/hub.md "Flower").

Protocol with the clients of one timestep group:
  fit parameters     for each linear of `linears`, in order: A [rank, in], then B [out, rank]
  fit metrics        perplexity_before, perplexity_after (held-out); num_examples = samples
  config sent        {"timestep_group": …} plus the strategy's client_config (FedProx's proximal_mu)
The aggregate is computed exactly by the hub's own code (`strategies.run.run_strategy`) and sent
back as the released factors in the same layout.
"""

from __future__ import annotations

import numpy as np
from flwr.common import (
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy as FlowerStrategy

from federation_hub.aggregate.lora import LoraPair
from federation_hub.strategies import ContributionMeta, make_strategy
from federation_hub.strategies.run import run_strategy


def to_ndarrays(pairs: dict[str, LoraPair], linears: list[str]) -> list[np.ndarray]:
    return [array for name in linears for array in (pairs[name].a, pairs[name].b)]


def from_ndarrays(arrays: list[np.ndarray], linears: list[str]) -> dict[str, LoraPair]:
    if len(arrays) != 2 * len(linears):
        raise ValueError(f"expected {2 * len(linears)} arrays (A, B per linear), got {len(arrays)}")
    return {name: LoraPair(a=arrays[2 * i], b=arrays[2 * i + 1]) for i, name in enumerate(linears)}


class DafStrategy(FlowerStrategy):
    def __init__(
        self,
        linears: list[str],
        shapes: dict[str, tuple[int, int, int]],  # linear -> (rank, in, out)
        timestep_group: str,
        strategy: str = "daf",
        strategy_params: dict | None = None,
        release_rank: int | None = None,  # None: each linear's rank; 0: exact
        initial_parameters: Parameters | None = None,
        min_fit_clients: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        self.linears = list(linears)
        self.shapes = shapes
        self.timestep_group = timestep_group
        self.policy = make_strategy(strategy, timestep_group, strategy_params)
        self.release_rank = release_rank
        self.initial_parameters = initial_parameters
        self.min_fit_clients = min_fit_clients
        self.rng = np.random.default_rng(seed)
        self.sketch_seed = seed

    def __repr__(self) -> str:
        return f"DafStrategy({self.policy.name}, {self.timestep_group})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.initial_parameters

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        clients = client_manager.sample(
            num_clients=max(self.min_fit_clients, client_manager.num_available()),
            min_num_clients=self.min_fit_clients,
        )
        config = {"timestep_group": self.timestep_group, **self.policy.client_config()}
        return [(client, FitIns(parameters, config)) for client in clients]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results:
            return None, {"withheld": "no results"}
        updates, metas = [], []
        for client, fit in results:
            updates.append(from_ndarrays(parameters_to_ndarrays(fit.parameters), self.linears))
            metas.append(
                ContributionMeta(
                    key=client.cid,
                    client_id=client.cid,
                    samples=fit.num_examples,
                    perplexity_before=float(fit.metrics["perplexity_before"]),
                    perplexity_after=float(fit.metrics["perplexity_after"]),
                )
            )
        shapes = {n: (self.shapes[n][2], self.shapes[n][1]) for n in self.linears}
        ranks = {
            n: self.shapes[n][0]
            if self.release_rank is None
            else (None if self.release_rank == 0 else self.release_rank)
            for n in self.linears
        }
        result = run_strategy(
            self.policy,
            metas,
            lambda idx: (updates[i] for i in idx),
            shapes,
            ranks,
            self.rng,
            self.sketch_seed + server_round,
        )
        if result.withheld:
            return None, {"withheld": result.selection.reason, "contributors": 0}
        released = {name: f.pair for name, f in result.factors.items()}
        return ndarrays_to_parameters(to_ndarrays(released, self.linears)), {
            "contributors": result.selection.contributors
        }

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):
        return []  # clients validate locally and report perplexity with their fit results

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list
    ):
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters):
        return None
