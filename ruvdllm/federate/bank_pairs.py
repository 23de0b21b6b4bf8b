"""A bank's TALoRA group adapters as the hub's LoRA pairs, and back; and the merge of a released
aggregate into a device's adapter. Pure numpy over arrays: no I/O.

The two layouts of one adapted linear `y = W x + B A x` (docs/artifact.md "Shapes", docs/hub.md):

    bank (runtime/banks.py)  a [L, in, r] = Aᵀ per layer,  b [L, r, out] = s·Bᵀ   (scale folded in b)
    hub  (one per layer)     "layers.{i}.{target}":  A [r, in] = a[i]ᵀ,  B [out, r] = b[i]ᵀ

so B A = (a[i] b[i])ᵀ: the same delta, transposed storage; nothing is rescaled on the way.
"""

from __future__ import annotations

import numpy as np

from federation_hub.aggregate.lora import LoraPair, LowRankSum
from runtime.banks import Adapter, Bank, as_f32
from runtime.talora import group_names


def linear_name(layer: int, target: str) -> str:
    return f"layers.{layer}.{target}"


def bank_shapes(bank: Bank) -> dict[str, dict]:
    """The round `shapes` a bank's adapters fit: every layer × target at the bank's rank."""
    return {
        linear_name(i, target): {"rank": bank.rank, "in_features": fan_in, "out_features": fan_out}
        for i in range(bank.layers)
        for target, (fan_in, fan_out) in bank.targets.items()
    }


def group_slots(bank: Bank) -> dict[str, int]:
    """Timestep group name -> its TALoRA slot (slots [0, G) in the bank's order)."""
    return {name: slot for slot, name in enumerate(group_names(bank.groups))}


def adapter_in_slot(bank: Bank, slot: int) -> Adapter | None:
    return next((a for a in bank.adapters.values() if a.slot == slot), None)


def adapter_pairs(bank: Bank, adapter: Adapter) -> dict[str, LoraPair]:
    """The adapter's delta per linear, in the hub's layout (float32)."""
    pairs = {}
    r = bank.rank
    for target, (fan_in, fan_out) in bank.targets.items():
        a_flat, b_flat = adapter.factors[target]
        a = np.frombuffer(a_flat.tobytes(), np.float32).reshape(bank.layers, fan_in, r)
        b = np.frombuffer(b_flat.tobytes(), np.float32).reshape(bank.layers, r, fan_out)
        for i in range(bank.layers):
            pairs[linear_name(i, target)] = LoraPair(
                a=np.ascontiguousarray(a[i].T), b=np.ascontiguousarray(b[i].T)
            )
    return pairs


def bank_factors(bank: Bank, pairs: dict[str, LoraPair]) -> dict[str, tuple]:
    """Pairs of the bank's rank, back into the bank's flat float32 factors per target."""
    factors = {}
    for target, (fan_in, fan_out) in bank.targets.items():
        a = np.empty((bank.layers, fan_in, bank.rank), np.float32)  # L, in, r
        b = np.empty((bank.layers, bank.rank, fan_out), np.float32)  # L, r, out
        for i in range(bank.layers):
            pair = pairs[linear_name(i, target)]
            a[i], b[i] = pair.a.T, pair.b.T
        factors[target] = (as_f32(a), as_f32(b))
    return factors


def merge_pairs(
    local: dict[str, LoraPair] | None, release: dict[str, LoraPair], weight: float, rank: int
) -> dict[str, LoraPair]:
    """(1 − weight)·local + weight·release per linear, refactorised to `rank` (the best rank-`rank`
    approximation, by SVD of the exact sum: A and B are never averaged separately). No local
    adapter: the release as it is (a device with nothing of its own takes everyone's)."""
    merged = {}
    for name, theirs in release.items():
        out_features, in_features = theirs.b.shape[0], theirs.a.shape[1]
        total = LowRankSum(out_features, in_features)
        if local is None:
            total.add(theirs, 1.0)
        else:
            total.add(local[name], 1.0 - weight)
            total.add(theirs, weight)
        pair = total.factorize(rank).pair
        merged[name] = _pad_rank(pair, rank)
    return merged


def _pad_rank(pair: LoraPair, rank: int) -> LoraPair:
    """A factorisation of lower numerical rank, zero-padded to the bank's slot rank."""
    k = pair.a.shape[0]
    a = np.zeros((rank, pair.a.shape[1]), np.float32)
    b = np.zeros((pair.b.shape[0], rank), np.float32)
    a[:k], b[:, :k] = pair.a, pair.b
    return LoraPair(a=a, b=b)


def fits(bank: Bank, shapes: dict) -> bool:
    """Do a round's (or release's) linears and sizes match the bank's? The rank may differ: a
    release is refactorised to the bank's rank when merged."""
    mine = bank_shapes(bank)
    return set(shapes) == set(mine) and all(
        (s["in_features"], s["out_features"]) == (mine[n]["in_features"], mine[n]["out_features"])
        for n, s in shapes.items()
    )
