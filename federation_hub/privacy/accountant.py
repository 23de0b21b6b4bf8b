"""(ε, δ) spent by a client, from Google's dp-accounting RDP accountant.

Every public round a client contributes to is one Gaussian mechanism with that round's noise
multiplier, on the full population (no sampling amplification is claimed: the hub does not
sample clients, they choose to contribute). Rounds compose; the RDP accountant converts the
composition to ε at the hub's δ.
"""

from __future__ import annotations

from collections.abc import Sequence

from ruvdllm.errors import RuvdllmError


class BudgetExhausted(RuvdllmError):
    """A contribution would take a client past its ε budget for the period."""


def epsilon_spent(noise_multipliers: Sequence[float], delta: float) -> float:
    """ε after composing one Gaussian mechanism per entry (0 for none)."""
    if not noise_multipliers:
        return 0.0
    import dp_accounting  # imported here: it pulls scipy, and only public rounds need it
    from dp_accounting.rdp import RdpAccountant

    event = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(s) for s in noise_multipliers])
    accountant = RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def charge(spent: Sequence[float], noise_multiplier: float, delta: float, budget: float) -> float:
    """ε after adding one contribution at `noise_multiplier` to those already `spent`; raises
    BudgetExhausted (naming both numbers) when that would exceed `budget`."""
    after = epsilon_spent([*spent, noise_multiplier], delta)
    if after > budget:
        before = epsilon_spent(spent, delta)
        raise BudgetExhausted(
            f"privacy budget: this contribution would bring ε to {after:.3f} (spent {before:.3f}) over the budget {budget:g} for this period"
        )
    return after
