"""Attention-mask annealing (DiffuLLaMA, Gong et al. 2025): the AR model was trained causal, so
the conversion starts from the causal pattern and opens the diffusion pattern's extra keys
gradually. Each extra key (one the target pattern allows and the causal start does not) is
opened with probability `progress`, drawn per query/key pair and per sample:

    progress 0      causal start       (with the shift: exactly the AR model's computation)
    0 < p < 1       causal | (target & Bernoulli(p))
    progress >= 1   the target pattern (block-causal for BD3LM, bidirectional for MDLM)

progress rises linearly from 0 to 1 over the first `anneal_steps` optimizer steps.
"""

from __future__ import annotations

import torch


def anneal_progress(step: int, anneal_steps: int) -> float:
    """Fraction of the diffusion pattern opened at optimizer step `step` (0-based)."""
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, step / anneal_steps)


def annealed(
    target: torch.Tensor, start: torch.Tensor, progress: float, generator: torch.Generator
) -> torch.Tensor:
    """`start | (target & opened)`, opened ~ Bernoulli(progress) per entry; `start` must lie
    inside `target` (every key the causal start sees stays visible at the end)."""
    if progress >= 1.0:
        return target
    if progress <= 0.0:
        return start
    # drawn on the CPU generator so that the same seed opens the same keys on every device
    opened = (torch.rand(target.shape, generator=generator) < progress).to(target.device)
    return start | (target & opened)
