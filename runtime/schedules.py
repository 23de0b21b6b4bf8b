"""Noise schedules: how much of a span is still masked at time t, and from that how many tokens
each denoising step commits (docs/sampling.md §6). Pure standard-library math.

A schedule is the masked fraction m(t), t in [0, 1], nondecreasing, normalised so that
m(0) = 0 (clean) and m(1) = 1 (all masked). Sampling walks the grid t_s = 1 - s/steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ruvdllm.errors import RuvdllmError


@dataclass(frozen=True)
class Schedule:
    """Base class: subclasses give `raw(t)`; `masked(t)` normalises it to the unit endpoints."""

    name = "schedule"

    def raw(self, t: float) -> float:
        raise TypeError(f"{type(self).__name__} must define raw(t)")

    def masked(self, t: float) -> float:
        t = min(max(t, 0.0), 1.0)
        low, high = self.raw(0.0), self.raw(1.0)
        return (self.raw(t) - low) / (high - low)


@dataclass(frozen=True)
class Linear(Schedule):
    """m(t) = t: LLaDA's schedule; MDLM's log-linear one once normalised."""

    name = "linear"

    def raw(self, t: float) -> float:
        return t


@dataclass(frozen=True)
class LogLinear(Schedule):
    """MDLM's default: survival 1 - (1 - eps) t. Kept under its own name so MDLM configs map;
    after normalisation it equals Linear."""

    eps: float = 1e-3  # MDLM's default: keeps the survival probability away from 0 at t = 1
    name = "loglinear"

    def raw(self, t: float) -> float:
        return (1.0 - self.eps) * t


@dataclass(frozen=True)
class Cosine(Schedule):
    """m(t) = 1 - cos(pi t / 2) (MDLM): commits many tokens early, few late."""

    name = "cosine"

    def raw(self, t: float) -> float:
        return 1.0 - math.cos(math.pi * t / 2)


@dataclass(frozen=True)
class CosineSqr(Schedule):
    """m(t) = 1 - cos^2(pi t / 2) (MDLM's cosine-sqr): an S-curve, few tokens in the first and
    last steps, most in the middle."""

    name = "cosine-sqr"

    def raw(self, t: float) -> float:
        return 1.0 - math.cos(math.pi * t / 2) ** 2


@dataclass(frozen=True)
class Polynomial(Schedule):
    """m(t) = t^p: p > 1 commits many tokens early and few late, p < 1 the reverse."""

    exponent: float = 2.0  # square: the common member of the power family
    name = "polynomial"

    def raw(self, t: float) -> float:
        return t**self.exponent


@dataclass(frozen=True)
class Geometric(Schedule):
    """MDLM's geometric noise: total noise sigma_min^(1-t) sigma_max^t, m = 1 - exp(-sigma)."""

    sigma_min: float = 1e-3  # MDLM's defaults: almost clean at t = 0 ...
    sigma_max: float = 20.0  # ... and almost fully masked at t = 1
    name = "geometric"

    def raw(self, t: float) -> float:
        sigma = self.sigma_min ** (1.0 - t) * self.sigma_max**t
        return 1.0 - math.exp(-sigma)


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (Linear, LogLinear, Cosine, CosineSqr, Polynomial, Geometric)
}


def make_schedule(name: str, **params: float) -> Schedule:
    """The schedule called `name`; unknown names and parameters are user errors."""
    if name not in SCHEDULES:
        raise RuvdllmError(f"schedule {name!r}: unknown (choose from {', '.join(SCHEDULES)})")
    try:
        return SCHEDULES[name](**params)
    except TypeError as exc:
        raise RuvdllmError(f"schedule {name!r}: bad parameters {params} ({exc})") from None


def unmask_counts(length: int, steps: int, schedule: Schedule) -> list[int]:
    """Tokens committed at each of `steps` steps over a span of `length`: at least one per step,
    summing to `length`, following the schedule's clean fraction at t_s = 1 - s/steps."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if not 1 <= steps <= length:
        raise ValueError(f"steps must be in 1..{length}, got {steps}")
    counts = []
    clean = 0
    for s in range(steps):
        t_next = 1.0 - (s + 1) / steps
        target = math.floor(length * (1.0 - schedule.masked(t_next)) + 0.5)
        # At least one token now, and leave at least one for every remaining step.
        after = min(max(target, clean + 1), length - (steps - s - 1))
        counts.append(after - clean)
        clean = after
    return counts
