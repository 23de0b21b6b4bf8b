"""BD3LM: semi-autoregressive block diffusion. Blocks are denoised one after another; committed
tokens are cached (docs/sampling.md §3).

Chunk of one step, with n committed tokens of which `cached` are in the cache:

    input_ids   tokens[cached:n]        block (masks / committed)
    block_ids   0 1 2 .. n-cached-1      n-cached  (all block positions)
                └ causal, cannot see the block ┘  └ see everything before and each other

The first step of each block carries every uncached committed token (the prompt, or the lead
token and the previous block); afterwards the cache is committed up to n-1, so later steps carry
only [tokens[n-1]] + block.

A one-position block adds no row at all: the last committed token's row predicts it, and its mask
would be attended to by nothing and predict past the block. Block 1 is then exactly autoregressive
decoding, one row per token, the whole chunk committed after it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from runtime.backend import Backend, Chunk
from runtime.control import AdapterControl
from runtime.denoise import Span, StepEvent, denoise_span
from runtime.settings import GenerationSettings, Plan


def bd3lm_chunk(
    tokens: list[int], cached: int, block: Span, mask_id: int, adapter_rows: list[list[float]]
) -> Chunk:
    """The uncached committed tokens (causal) followed by the block (one block id); outputs start
    at the last committed token, whose row predicts the block's first position. A one-position
    block is predicted by that row alone and adds none (module docstring)."""
    context = tokens[cached:]
    rows = [] if len(block) == 1 else [mask_id if token is None else token for token in block]
    return Chunk(
        input_ids=context + rows,
        position_ids=list(range(cached, len(tokens) + len(rows))),
        block_ids=list(range(len(context))) + [len(context)] * len(rows),
        output_offset=len(context) - 1,
        adapter_weights=adapter_rows[: len(context) + len(rows)],
    )


def sample_bd3lm(
    backend: Backend,
    prompt: list[int],
    settings: GenerationSettings,
    plan: Plan,
    rng: random.Random,
    control: AdapterControl,
    on_step: Callable[[StepEvent], None],
) -> list[int]:
    """Generate up to `settings.length` tokens after `prompt`, block by block.

    Args:
        backend: runs the graph and holds the cache of committed tokens.
        prompt: token ids, at least one.
        settings: decoding, sampling and schedule choices; stop_at_eos ends after a block with EOS.
        plan: block length (`plan.span`) and steps per block, already checked.
        rng: the generation's random.Random; consumed only when temperature > 0.
        control: adapter weights per row (TALoRA / DGR).
        on_step: receives every step's StepEvent.
    """
    mask_id = backend.config.mask_token_id
    eos = set(backend.config.eos_token_ids)
    backend.reset()
    tokens = list(prompt)  # committed: prompt, then finished blocks
    generated: list[int] = []

    def forward(block: Span, t: float):
        cached = backend.cached()
        rows = control.rows(len(tokens) - cached, len(block), t)
        output = backend.forward(bd3lm_chunk(tokens, cached, block, mask_id, rows))
        # The lead token stays out of the cache while later steps of the block need its row; a
        # one-position block has no later step, and its chunk holds committed tokens only.
        keep = len(tokens) if len(block) == 1 else len(tokens) - 1
        if cached < keep:
            backend.commit(keep)
        return output

    while len(generated) < settings.length:
        index = len(generated) // plan.span
        length = min(plan.span, settings.length - len(generated))
        steps = min(plan.steps, length)
        block = denoise_span(
            length, steps, forward, settings, mask_id, rng, control, on_step, index, generated
        )
        tokens.extend(block)
        generated.extend(block)
        if settings.stop_at_eos and eos.intersection(block):
            break
    return generated
