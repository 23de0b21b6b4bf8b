"""Strategies by name. A round names its strategy and parameters; `make_strategy` builds it and
rejects unknown names or parameters (a typo must not silently fall back to a default)."""

from __future__ import annotations

import dataclasses

from federation_hub.strategies.base import ContributionMeta, Selection, Strategy
from federation_hub.strategies.baselines import FedAvg, FedProx
from federation_hub.strategies.daf import (
    DAF_POLICIES,
    Conservative,
    Hybrid,
    QualityWeighted,
    Selective,
    WeightedAverage,
    daf_for_group,
)

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "weighted": WeightedAverage,
    "quality": QualityWeighted,
    "conservative": Conservative,
    "selective": Selective,
    "hybrid": Hybrid,
}
STRATEGY_NAMES = ("daf", *STRATEGIES)


def make_strategy(name: str, timestep_group: str, params: dict | None = None) -> Strategy:
    """`daf` resolves to the policy of `timestep_group`; any other name is one policy for all."""
    params = dict(params or {})
    if name == "daf":
        cls = DAF_POLICIES.get(timestep_group)
        if cls is None:
            return daf_for_group(timestep_group)  # raises with the known names
    elif name in STRATEGIES:
        cls = STRATEGIES[name]
    else:
        raise ValueError(f"strategy {name!r}: use one of {', '.join(STRATEGY_NAMES)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ValueError(
            f"strategy {cls.name!r} has no parameter {', '.join(unknown)} (known: {', '.join(sorted(fields))})"
        )
    for key, value in params.items():
        accepted = _ACCEPTED[str(fields[key].type)]
        if not isinstance(value, accepted) or isinstance(value, bool):
            raise ValueError(f"strategy {cls.name!r}: {key} must be {fields[key].type}, not {value!r}")
    return cls(**params)


_ACCEPTED = {"float": (int, float), "int": (int,), "str": (str,)}  # the types strategy parameters have


__all__ = [
    "ContributionMeta",
    "Conservative",
    "FedAvg",
    "FedProx",
    "Hybrid",
    "QualityWeighted",
    "STRATEGY_NAMES",
    "Selection",
    "Selective",
    "Strategy",
    "WeightedAverage",
    "make_strategy",
]
