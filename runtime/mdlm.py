"""MDLM: the whole generation is one span, denoised bidirectionally together with the prompt
(docs/sampling.md §2). No cache: every step recomputes prompt and span."""

from __future__ import annotations

import random
from collections.abc import Callable

from runtime.backend import Backend, Chunk
from runtime.control import AdapterControl
from runtime.denoise import Span, StepEvent, denoise_span
from runtime.settings import GenerationSettings, Plan


def mdlm_chunk(prompt: list[int], span: Span, mask_id: int, adapter_rows: list[list[float]]) -> Chunk:
    """prompt + span, all positions one bidirectional block; outputs start at the prompt's last
    token, whose row predicts the span's first position (the shift)."""
    ids = prompt + [mask_id if token is None else token for token in span]
    return Chunk(
        input_ids=ids,
        position_ids=list(range(len(ids))),
        block_ids=[0] * len(ids),
        output_offset=len(prompt) - 1,
        adapter_weights=adapter_rows,
    )


def sample_mdlm(
    backend: Backend,
    prompt: list[int],
    settings: GenerationSettings,
    plan: Plan,
    rng: random.Random,
    control: AdapterControl,
    on_step: Callable[[StepEvent], None],
) -> list[int]:
    """Generate `settings.length` tokens after `prompt` in `plan.steps` steps over one span.

    Args:
        backend: runs the graph; its cache stays empty.
        prompt: token ids, at least one.
        settings: decoding, sampling and schedule choices (runtime/settings.py).
        plan: span length and steps, already checked (settings.resolve).
        rng: the generation's random.Random; consumed only when temperature > 0.
        control: adapter weights per row (TALoRA / DGR).
        on_step: receives every step's StepEvent.
    """
    mask_id = backend.config.mask_token_id
    backend.reset()

    def forward(span: Span, t: float):
        return backend.forward(mdlm_chunk(prompt, span, mask_id, control.rows(len(prompt), len(span), t)))

    return denoise_span(plan.span, plan.steps, forward, settings, mask_id, rng, control, on_step)
