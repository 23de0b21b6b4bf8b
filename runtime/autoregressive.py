"""The AR model through the diffusion model's own graph: every row with adapter_gate 0 and causal
block ids is the checkpoint the model was converted from, so one token per forward over a cache
of such rows decodes it exactly as it was trained to run (docs/sampling.md §11). It is the
lossless baseline the verified sampler must equal, and the AR half of that sampler.

    input_ids     tokens[cached:]       (the prompt at first, then the last token)
    adapter_gate  0 0 .. 0              block_ids 0 1 .. (causal)   adapter weights all 0
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from runtime import speculative
from runtime.backend import Backend, Chunk, StepOutput
from runtime.control import AdapterControl
from runtime.denoise import StepEvent
from runtime.settings import GenerationSettings, Plan
from runtime.speculative import Candidates


def ar_rows(tokens: list[int], cached: int, slots: int) -> Chunk:
    """The uncached tokens as AR rows; outputs start at the last one (it predicts the next)."""
    context = tokens[cached:]
    v = len(context)
    return Chunk(
        input_ids=context,
        position_ids=list(range(cached, cached + v)),
        block_ids=list(range(v)),
        output_offset=v - 1,
        adapter_weights=[[0.0] * slots for _ in range(v)],
        adapter_gate=[0.0] * v,
    )


def ar_distribution(output: StepOutput, row: int, settings: GenerationSettings) -> Candidates:
    """What the AR model samples at `row` (temperature > 0): its own candidates, nothing dropped —
    the mask token is an ordinary token to the AR model."""
    s = settings
    return speculative.row_distribution(
        output.topk_ids[row], output.topk_logits[row], s.temperature, s.top_k, s.top_p
    )


def ar_token(output: StepOutput, row: int, settings: GenerationSettings, rng: random.Random) -> int:
    """The AR model's token at `row`: its argmax at temperature 0 (no draw), else one draw."""
    if settings.temperature <= 0.0:
        return int(output.topk_ids[row][0])
    return speculative.sample(ar_distribution(output, row, settings), rng)


def sample_ar(
    backend: Backend,
    prompt: list[int],
    settings: GenerationSettings,
    plan: Plan,
    rng: random.Random,
    control: AdapterControl,
    on_step: Callable[[StepEvent], None],
) -> list[int]:
    """Up to `settings.length` tokens of the AR model after `prompt`, one per forward.

    Args:
        backend: runs the graph (with the adapter switch, if it has a conversion adapter).
        prompt: token ids, at least one.
        settings: temperature / top-k / top-p; stop_at_eos ends after an EOS.
        plan: unused beyond the checks resolve made (one token per forward).
        rng: consumed only when temperature > 0, one draw per token.
        control: only its slot count (every adapter weight is 0: the base model).
        on_step: receives one StepEvent per forward.
    """
    eos = set(backend.config.eos_token_ids)
    backend.reset()
    tokens = list(prompt)
    generated: list[int] = []
    while len(generated) < settings.length:
        started = time.perf_counter()
        output = backend.forward(ar_rows(tokens, backend.cached(), control.slots))
        forward_ms = (time.perf_counter() - started) * 1e3
        token = ar_token(output, 0, settings, rng)
        backend.commit(len(tokens))  # every input row is now cached; the new token leads the next
        tokens.append(token)
        generated.append(token)
        on_step(
            StepEvent(
                span=len(generated) - 1,
                step=0,
                t=0.0,
                committed={len(generated) - 1: token},
                tokens=list(generated),
                retrieved=[],
                forward_ms=forward_ms,
                first_row=len(generated) - 1,
            )
        )
        if settings.stop_at_eos and token in eos:
            break
    return generated
