"""Loop C's online Fisher: how much each group adapter's singular components matter to the answers
learnt so far (runtime/learning/ewc.py), measured through the model's own forward and kept beside
the bank.

Measuring. For one group adapter and one noisy block of a good answer at its group's t (the loss
of loop B, masked_nll.py), the derivative of the masked NLL along each component u_k v_kᵀ of each
layer and target is a central difference of two forwards:

    ∂NLL/∂s_k ≈ (NLL(s_k + ε) − NLL(s_k − ε)) / 2ε

and the empirical Fisher is the mean of its square over the blocks. It is a coordinate derivative,
not SPSA's random-direction estimate, because a diagonal needs per-coordinate information, which a
squared SPSA estimate does not carry ((g·z_i)² = g² for every i); it costs 2 forwards per component
(layers × targets × rank) per block, which the singular-component parameterisation keeps small
(tiny test model: 8 components a group; the default model: 30 × 2 × 8 = 480).

The state. `fisher.json` in the bank directory, format 1:

    {"format": 1, "groups": {"<slot>": {"adapter": name, "fisher": {target: [[F per component] per layer]}}}}

`adapter` names the group adapter the numbers are about; written atomically (write_atomic) after
each consolidation. A Fisher whose adapter has since been replaced by someone else (a federation
merge) is used as it is, component by component in order of strength: an approximation, said in
docs/learning.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.banks import Bank
from runtime.learning.bank_update import write_atomic
from runtime.learning.ewc import Components, components
from runtime.learning.masked_nll import NoisyBlock, masked_nll

FISHER_NAME = "fisher.json"
FISHER_FORMAT = 1


@dataclass
class GroupFisher:
    adapter: str | None  # the group adapter these numbers describe
    fisher: dict[str, np.ndarray]  # target -> [layers, rank]


@dataclass
class FisherState:
    groups: dict[int, GroupFisher] = field(default_factory=dict)

    def of(self, slot: int, target: str, layers: int, rank: int) -> np.ndarray:
        """[layers, rank] for a group adapter's target; zeros when nothing was measured."""
        found = self.groups.get(slot)
        values = None if found is None else found.fisher.get(target)
        if values is None or values.shape != (layers, rank):
            return np.zeros((layers, rank))
        return values

    def save(self, directory: Path) -> None:
        body = {
            "format": FISHER_FORMAT,
            "groups": {
                str(slot): {"adapter": g.adapter, "fisher": {t: f.tolist() for t, f in g.fisher.items()}}
                for slot, g in sorted(self.groups.items())
            },
        }
        write_atomic(Path(directory) / FISHER_NAME, json.dumps(body).encode())

    @classmethod
    def load(cls, directory: Path) -> FisherState:
        """The saved state; none, or one this version cannot read: empty (every component then
        counts as unmeasured, and the next consolidation is a plain merge for it)."""
        try:
            body = json.loads((Path(directory) / FISHER_NAME).read_text())
            if body.get("format") != FISHER_FORMAT:
                return cls()
            groups = {
                int(slot): GroupFisher(
                    g.get("adapter"),
                    {t: np.maximum(np.asarray(f, np.float64), 0.0) for t, f in g["fisher"].items()},
                )
                for slot, g in body["groups"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return cls()
        return cls(groups)


def adapter_components(bank: Bank, slot: int) -> dict[str, list[Components]]:
    """target -> the singular components of each layer of the adapter in `slot` (zeros if empty)."""
    adapter = next((a for a in bank.adapters.values() if a.slot == slot), None)
    out = {}
    for target, (fan_in, fan_out) in bank.targets.items():
        if adapter is None:
            a = np.zeros((bank.layers, fan_in, bank.rank))
            b = np.zeros((bank.layers, bank.rank, fan_out))
        else:
            fa, fb = adapter.factors[target]
            a = np.frombuffer(memoryview(fa).cast("B"), np.float32).reshape(bank.layers, fan_in, bank.rank)
            b = np.frombuffer(memoryview(fb).cast("B"), np.float32).reshape(bank.layers, bank.rank, fan_out)
        out[target] = [components(a[layer], b[layer]) for layer in range(bank.layers)]
    return out


def slot_factors(parts: dict[str, list[Components]], rank: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Bank-layout factors (a [L, in, R], b [L, R, out]) of per-layer components: a = U·diag(s),
    b = Vᵀ, which stays exact when a perturbed s_k is negative."""
    factors = {}
    for target, layers in parts.items():
        a = np.stack([c.u[:, :rank] * c.s[:rank] for c in layers]).astype(np.float32)
        b = np.stack([c.v[:, :rank].T for c in layers]).astype(np.float32)
        factors[target] = (a, b)
    return factors


def measure_fisher(
    session,
    bank: Bank,
    slot: int,
    blocks: Sequence[NoisyBlock],
    mask_id: int,
    epsilon: float,
) -> dict[str, np.ndarray]:
    """target -> [layers, rank]: the mean squared derivative of the masked NLL along each singular
    component of the group adapter in `slot`, over `blocks` (module docstring). `session` is a
    LogitsSession (set_bank, forward(chunk, slot, factors))."""
    session.set_bank(bank)
    parts = adapter_components(bank, slot)
    talora = bank.talora_config()
    rank = bank.rank

    def nll(factors, block: NoisyBlock) -> float:
        return masked_nll(
            lambda chunk: session.forward(chunk, slot, factors),
            [block],
            mask_id,
            bank.slots,
            bank.groups,
            talora,
            None,  # the group adapter is weighed by TALoRA, as in generation
        )

    derivatives = {t: np.zeros((len(blocks), bank.layers, rank)) for t in parts}
    for target, layers in parts.items():
        for layer, comp in enumerate(layers):
            for k in range(min(rank, comp.s.size)):
                shifted = []
                for sign in (1.0, -1.0):
                    s = comp.s.copy()
                    s[k] += sign * epsilon
                    changed = {**parts, target: list(layers)}
                    changed[target][layer] = Components(comp.u, s, comp.v)
                    shifted.append(slot_factors(changed, rank))
                for i, block in enumerate(blocks):
                    up, down = nll(shifted[0], block), nll(shifted[1], block)
                    derivatives[target][i, layer, k] = (up - down) / (2.0 * epsilon)
    return {t: (d**2).mean(axis=0) for t, d in derivatives.items()}
