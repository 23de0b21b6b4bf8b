"""A MicroLoRA: a rank-1/2 adapter on the bank's targets (q_proj, v_proj) of the last few layers,
learnt by loop B for one cluster of good trajectories, and how it sits in a bank slot.

    W x  +  b_lᵀ (a_lᵀ x)      per trained layer l and target:  a_l [in, r],  b_l [r, out]

The bank layout (runtime/banks.py) has a [L, in, R] and b [L, R, out] per slot, R the bank's rank
(the LoRA scale folded into b). A MicroLoRA of rank r <= R fills columns 0..r-1 of its slot and
leaves the rest zero, and layers it does not train are zero: the slot computes exactly the
MicroLoRA (`to_bank` / `from_bank` are inverse on what it trains).

Only b is trained; a stays the random projection it starts with (LoRA-FA, Zhang et al. 2023):
half the parameters for SPSA to estimate (spsa.py), and b = 0 at the start, so a new MicroLoRA
leaves the model exactly as it was until training moves it.

Numpy only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

NAME = re.compile(r"^micro-g(\d+)-s(\d+)-v(\d+)$")  # the bank adapters loop B owns


def micro_name(group: int, slot: int, version: int) -> str:
    return f"micro-g{group}-s{slot}-v{version}"


def parse_micro_name(name: str) -> tuple[int, int, int] | None:
    """(group, slot, version) of a MicroLoRA's adapter name; None for any other adapter."""
    match = NAME.match(name)
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


@dataclass
class MicroLora:
    group: int  # the timestep group its cluster came from
    slot: int  # the bank's DGR slot it occupies
    layers: tuple[int, ...]  # the layers it adapts, ascending
    a: dict[str, np.ndarray]  # target -> [n_layers, in, r], fixed
    b: dict[str, np.ndarray]  # target -> [n_layers, r, out], trained

    @property
    def rank(self) -> int:
        return next(iter(self.a.values())).shape[2]

    @property
    def targets(self) -> list[str]:
        return sorted(self.a)

    # --- the trained parameters as one vector (what SPSA moves) ---------------------------------

    def b_vector(self) -> np.ndarray:
        return np.concatenate([self.b[t].ravel() for t in self.targets]).astype(np.float64)

    def with_b(self, vector: np.ndarray) -> MicroLora:
        """A copy whose b factors are `vector` (in `b_vector`'s order)."""
        b, start = {}, 0
        for t in self.targets:
            size = self.b[t].size
            b[t] = np.asarray(vector[start : start + size], np.float32).reshape(self.b[t].shape)
            start += size
        if start != len(vector):
            raise ValueError(f"{len(vector)} values for {start} b parameters")
        return MicroLora(self.group, self.slot, self.layers, self.a, b)

    # --- in the bank's layout -------------------------------------------------------------------

    def to_bank(self, layers: int, rank: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per target (a [layers, in, rank], b [layers, rank, out]), zero where it does not train."""
        factors = {}
        for t in self.targets:
            n, fan_in, r = self.a[t].shape
            fan_out = self.b[t].shape[2]
            a = np.zeros((layers, fan_in, rank), np.float32)
            b = np.zeros((layers, rank, fan_out), np.float32)
            a[list(self.layers), :, :r] = self.a[t]
            b[list(self.layers), :r, :] = self.b[t]
            factors[t] = (a, b)
        return factors

    @classmethod
    def from_bank(
        cls,
        factors: dict[str, tuple],
        group: int,
        slot: int,
        layers: tuple[int, ...],
        rank: int,
        bank_layers: int,
        bank_rank: int,
    ) -> MicroLora:
        """The MicroLoRA held in a bank slot (flat float32 factors, runtime/banks.py), over `layers`."""
        a, b = {}, {}
        for t, (fa, fb) in factors.items():
            fa = np.frombuffer(memoryview(fa).cast("B"), np.float32).reshape(bank_layers, -1, bank_rank)
            fb = np.frombuffer(memoryview(fb).cast("B"), np.float32).reshape(bank_layers, bank_rank, -1)
            a[t] = fa[list(layers), :, :rank].copy()
            b[t] = fb[list(layers), :rank, :].copy()
        return cls(group, slot, tuple(layers), a, b)


def new_micro(
    group: int,
    slot: int,
    targets: dict[str, tuple[int, int]],
    layers: tuple[int, ...],
    rank: int,
    rng: np.random.Generator,
) -> MicroLora:
    """a uniform in ±1/√in (PEFT's LoRA initialisation bound), b zero: the model unchanged."""
    a, b = {}, {}
    for t, (fan_in, fan_out) in sorted(targets.items()):
        bound = 1.0 / np.sqrt(fan_in)
        a[t] = rng.uniform(-bound, bound, (len(layers), fan_in, rank)).astype(np.float32)
        b[t] = np.zeros((len(layers), rank, fan_out), np.float32)
    return MicroLora(group, slot, tuple(layers), a, b)


def trained_layers(num_layers: int, last: int) -> tuple[int, ...]:
    """The last `last` layers (0: all of them), ascending."""
    last = num_layers if last <= 0 else min(last, num_layers)
    return tuple(range(num_layers - last, num_layers))
