"""The loss loop B lowers: the masked-token NLL of a good answer, one noisy block at a time, laid
out exactly as the BD3LM sampler lays out its forwards (runtime/bd3lm.py).

For an answer after a prompt, a noisy block is one block of the answer (the sampler's grid: blocks
start where the answer starts) with each position masked with probability t, t drawn from the
MicroLoRA's timestep group; the context is the prompt and the answer before the block, clean and
causal. The forward's row i predicts block position i, so the NLL of the masked positions is
logsumexp(row) − logit(row, answer token). Adapter rows are what the runtime would give them:
TALoRA's weights at t = 0 for the context, at t for the block, plus the MicroLoRA's slot at
weight 1 on the block rows (where DGR puts a retrieved adapter).

Numpy and the sampler core; the forward that returns logits is passed in (logits_session.py on
CPython).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from runtime.backend import Chunk
from runtime.bd3lm import bd3lm_chunk
from runtime.talora import TaloraConfig, talora_weights

# chunk -> logits [S', vocab] of its output rows (float32 or float64)
LogitsForward = Callable[[Chunk], np.ndarray]


@dataclass(frozen=True)
class NoisyBlock:
    context: list[int]  # prompt + the answer before the block, clean
    block: list[int | None]  # the block, None where masked
    targets: tuple[tuple[int, int], ...]  # (block position, answer token) of each masked position
    t: float


def noisy_block(
    prompt: Sequence[int],
    answer: Sequence[int],
    block_size: int,
    t_range: tuple[float, float],
    rng: np.random.Generator,
    index: int | None = None,
) -> NoisyBlock:
    """One block of `answer` (a random one, or block `index`) masked at a random t in `t_range`
    (at least one position)."""
    blocks = max(1, -(-len(answer) // block_size))
    b = int(rng.integers(blocks)) if index is None else index
    tokens = list(answer[b * block_size : (b + 1) * block_size])
    t = float(rng.uniform(*t_range))
    masked = rng.random(len(tokens)) < t
    if not masked.any():
        masked[int(rng.integers(len(tokens)))] = True
    block = [None if m else tok for tok, m in zip(tokens, masked, strict=True)]
    targets = tuple((i, tok) for i, (tok, m) in enumerate(zip(tokens, masked, strict=True)) if m)
    return NoisyBlock(list(prompt) + list(answer[: b * block_size]), block, targets, t)


def adapter_rows(
    block: NoisyBlock, slots: int, groups: int, talora: TaloraConfig | None, slot: int | None
) -> list[list[float]]:
    """[context + block rows][slots]: TALoRA at t = 0 / t (as runtime/control.py), `slot` at 1 on
    the block rows (None: no MicroLoRA)."""

    def talora_at(t: float) -> list[float]:
        weights = talora_weights(t, talora)[:groups] if talora is not None else [0.0] * groups
        return weights + [0.0] * (slots - groups)

    clean, noisy = talora_at(0.0), talora_at(block.t)
    if slot is not None:
        noisy[slot] = 1.0
    return [clean] * len(block.context) + [noisy] * len(block.block)


def block_nll(logits: np.ndarray, block: NoisyBlock) -> tuple[float, int]:
    """(sum of the masked positions' NLL, their count) from the forward's output rows."""
    rows = np.asarray(logits, np.float64)
    total = 0.0
    for position, token in block.targets:
        row = rows[position]
        top = row.max()
        total += top + np.log(np.exp(row - top).sum()) - row[token]
    return total, len(block.targets)


def masked_nll(
    forward: LogitsForward,
    blocks: Sequence[NoisyBlock],
    mask_id: int,
    slots: int,
    groups: int,
    talora: TaloraConfig | None,
    slot: int | None,
) -> float:
    """Mean NLL per masked token over `blocks` (one forward each)."""
    total, count = 0.0, 0
    for block in blocks:
        rows = adapter_rows(block, slots, groups, talora, slot)
        chunk = bd3lm_chunk(block.context, 0, block.block, mask_id, rows)
        nll, n = block_nll(forward(chunk), block)
        total, count = total + nll, count + n
    return total / max(count, 1)
