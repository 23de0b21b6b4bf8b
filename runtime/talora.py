"""TALoRA: timestep-aware adapter banks. The adapter slots [0, G) hold one adapter per timestep
group; these functions give each group's mixture weight at time t (docs/sampling.md §7).
Pure standard library.

With the default boundaries (0, 1/3, 2/3, 1) the groups are, in slot order:

    slot 0  fine     t in [0,   1/3)   last steps, little left masked
    slot 1  domain   t in [1/3, 2/3)
    slot 2  coarse   t in [2/3, 1]     first steps, everything masked
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

from ruvdllm.errors import RuvdllmError

INTERPOLATIONS = ("discrete", "linear", "soft", "learned")
DEFAULT_GROUP_NAMES = ("fine", "domain", "coarse")


@dataclass(frozen=True)
class Router:
    """Learned routing: group logits = weights[g] . [t, sin(pi t), cos(pi t)] + bias[g]."""

    weights: tuple[tuple[float, float, float], ...]  # [G][3]
    bias: tuple[float, ...]  # [G]

    def logits(self, t: float) -> list[float]:
        features = (t, math.sin(math.pi * t), math.cos(math.pi * t))
        return [
            sum(w * f for w, f in zip(row, features, strict=True)) + b
            for row, b in zip(self.weights, self.bias, strict=True)
        ]


@dataclass(frozen=True)
class TaloraConfig:
    boundaries: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)  # coarse / domain / fine, as config.json
    interpolation: str = "linear"  # blends only near boundaries: smooth yet mostly one adapter per step
    width: float = 0.1  # transition width of "linear": a tenth of t, about one step in ten
    temperature: float = 0.05  # "soft": neighbours get ~e^-2 at 0.1 from their interval
    router: Router | None = None  # present when the bank was trained with a router ("learned")

    def __post_init__(self) -> None:
        b = self.boundaries
        if len(b) < 2 or b[0] != 0.0 or b[-1] != 1.0 or any(x >= y for x, y in pairwise(b)):
            raise RuvdllmError(f"timestep groups {b}: boundaries must rise strictly from 0 to 1")
        if self.interpolation not in INTERPOLATIONS:
            raise RuvdllmError(
                f"TALoRA interpolation {self.interpolation!r}: unknown (choose from {', '.join(INTERPOLATIONS)})"
            )
        narrowest = min(y - x for x, y in pairwise(b))
        if self.interpolation == "linear" and not 0.0 < self.width <= narrowest:
            raise RuvdllmError(
                f"TALoRA transition width {self.width}: must be in (0, {narrowest:.4g}] (the narrowest group)"
            )
        if self.interpolation == "soft" and self.temperature <= 0.0:
            raise RuvdllmError(f"TALoRA soft-boundary temperature {self.temperature}: must be > 0")
        if self.interpolation == "learned":
            if self.router is None:
                raise RuvdllmError("TALoRA learned routing: the bank has no router")
            if len(self.router.bias) != self.groups:
                raise RuvdllmError(
                    f"TALoRA router: {len(self.router.bias)} groups, the bank has {self.groups}"
                )

    @property
    def groups(self) -> int:
        return len(self.boundaries) - 1


def group_of(t: float, boundaries: tuple[float, ...]) -> int:
    """Index of the group whose [b_g, b_{g+1}) holds t; t = 1 belongs to the last group."""
    for g in range(len(boundaries) - 1):
        if t < boundaries[g + 1]:
            return g
    return len(boundaries) - 2


def discrete_weights(t: float, boundaries: tuple[float, ...]) -> list[float]:
    weights = [0.0] * (len(boundaries) - 1)
    weights[group_of(t, boundaries)] = 1.0
    return weights


def linear_weights(t: float, boundaries: tuple[float, ...], width: float) -> list[float]:
    """One-hot, ramped linearly across `width` centred on each interior boundary."""
    weights = discrete_weights(t, boundaries)
    for g in range(1, len(boundaries) - 1):
        start = boundaries[g] - width / 2
        if start <= t <= boundaries[g] + width / 2:
            upper = (t - start) / width
            weights = [0.0] * len(weights)
            weights[g - 1], weights[g] = 1.0 - upper, upper
    return weights


def soft_weights(t: float, boundaries: tuple[float, ...], temperature: float) -> list[float]:
    """softmax over groups of -distance(t, group interval) / temperature."""
    distances = [max(lo - t, 0.0, t - hi) for lo, hi in pairwise(boundaries)]
    return softmax([-d / temperature for d in distances])


def softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def talora_weights(t: float, config: TaloraConfig) -> list[float]:
    """The G group weights at time t; they sum to 1."""
    t = min(max(t, 0.0), 1.0)
    if config.interpolation == "discrete":
        return discrete_weights(t, config.boundaries)
    if config.interpolation == "linear":
        return linear_weights(t, config.boundaries, config.width)
    if config.interpolation == "soft":
        return soft_weights(t, config.boundaries, config.temperature)
    return softmax(config.router.logits(t))


def group_names(groups: int) -> tuple[str, ...]:
    return DEFAULT_GROUP_NAMES if groups == 3 else tuple(f"group{g}" for g in range(groups))
