"""Gradients from forwards alone: simultaneous-perturbation stochastic approximation (SPSA).

The runtime's forward is an onnxruntime graph (onnxruntime-web in the browser): no autograd. What
it can do is evaluate the loss at any adapter values, because the adapter factors are graph
inputs. SPSA (Spall 1992; MeZO, Malladi et al. 2023, for language-model fine-tuning) estimates the
gradient from two such evaluations along one random direction z:

    g = (f(θ + εz) − f(θ − εz)) / 2ε        the derivative of f along z (exact for a quadratic f)
    θ ← θ − lr · g · z / √d                 a step along z, of length lr·|g|

z has independent ±1 entries (Rademacher), so E[z zᵀ] = I and E[g z] = ∇f(θ) + O(ε²): an
unbiased gradient estimate whose variance grows with the dimension d. That is why loop B trains
MicroLoRAs of rank 1-2 (few parameters) and only their B factors. Both evaluations of a step use
the same data (the same masks): only the parameters differ, so the difference is the parameters'
effect, not the data's.

Pure numpy; `rng` is an argument.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Loss = Callable[[np.ndarray], float]


def rademacher(rng: np.random.Generator, d: int) -> np.ndarray:
    """d independent ±1 entries (float64)."""
    return rng.integers(0, 2, d).astype(np.float64) * 2.0 - 1.0


def directional_derivative(loss: Loss, theta: np.ndarray, z: np.ndarray, epsilon: float) -> float:
    """The central difference of `loss` at `theta` along `z`: z·∇f(θ) up to O(ε²) (exact when f is
    quadratic)."""
    return (loss(theta + epsilon * z) - loss(theta - epsilon * z)) / (2.0 * epsilon)


def spsa_step(
    loss: Loss, theta: np.ndarray, rng: np.random.Generator, epsilon: float, lr: float
) -> tuple[np.ndarray, float]:
    """One SPSA step on `loss` (two evaluations); returns (new θ, the directional derivative).
    A non-finite difference (an overflow in the forward) leaves θ where it was."""
    z = rademacher(rng, theta.size)
    g = directional_derivative(loss, theta, z, epsilon)
    if not np.isfinite(g):
        return theta, 0.0
    return theta - (lr * g / np.sqrt(theta.size)) * z, g


def spsa_minimise(
    loss_at: Callable[[int], Loss],
    theta: np.ndarray,
    steps: int,
    rng: np.random.Generator,
    epsilon: float,
    lr: float,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[np.ndarray, int]:
    """`steps` SPSA steps; step i minimises `loss_at(i)` (its own data: fresh masks each step).
    Returns (θ, steps taken): `should_stop` ends early (the process is shutting down)."""
    theta = np.array(theta, np.float64)
    for step in range(steps):
        if should_stop():
            return theta, step
        theta, _ = spsa_step(loss_at(step), theta, rng, epsilon, lr)
    return theta, steps
