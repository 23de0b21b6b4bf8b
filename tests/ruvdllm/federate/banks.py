"""Small banks for the federation tests: the shapes of the hub tests' rounds (tests/federation_hub/hubs.py
SMALL_SHAPES: 2 layers, q_proj 16->16 and v_proj 16->8, rank 4)."""

from __future__ import annotations

import numpy as np

from runtime.artifact import Features
from runtime.banks import Bank
from runtime.talora import group_names

TARGETS = {"q_proj": Features(16, 16), "v_proj": Features(16, 8)}


def small_bank(rng: np.random.Generator, scale: float = 0.1, layers: int = 2, targets=None) -> Bank:
    """A bank with a random adapter in each TALoRA group slot (and 2 empty DGR slots)."""
    targets = targets or TARGETS
    bank = Bank(layers=layers, hidden_size=16, rank=4, slots=5, targets=dict(targets))
    for slot, name in enumerate(group_names(bank.groups)):
        bank.add_adapter(name, slot, random_factors(bank, rng, scale))
    return bank


def random_factors(bank: Bank, rng: np.random.Generator, scale: float = 0.1, a_shared=None) -> dict:
    """Factors per target: a [L, in, r], b [L, r, out]; `a_shared` {target: a} fixes the a factors
    (adapters that share A span one rank-r subspace, so their blends stay rank r)."""
    factors = {}
    for target, (fan_in, fan_out) in bank.targets.items():
        a = a_shared[target] if a_shared else rng.standard_normal((bank.layers, fan_in, bank.rank)) * scale
        b = rng.standard_normal((bank.layers, bank.rank, fan_out)) * scale
        factors[target] = (np.asarray(a, np.float32), np.asarray(b, np.float32))
    return factors
