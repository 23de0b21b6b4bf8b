"""Generation over any Backend: check the settings, run the chosen sampler, truncate at EOS and
keep a per-step trace. Standard library only — the browser calls this very function."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from runtime.answer_store import AnswerStore
from runtime.autoregressive import sample_ar
from runtime.backend import Backend
from runtime.bd3lm import sample_bd3lm
from runtime.control import AdapterControl
from runtime.denoise import StepEvent
from runtime.mdlm import sample_mdlm
from runtime.settings import GenerationSettings, concrete, resolve
from runtime.talora import TaloraConfig
from runtime.verified import sample_verified

SAMPLER_FUNCTIONS = {"mdlm": sample_mdlm, "bd3lm": sample_bd3lm, "verified": sample_verified, "ar": sample_ar}


@dataclass(frozen=True)
class GenerationResult:
    tokens: list[int]  # generated ids, truncated before the first EOS (when settings.stop_at_eos)
    finish_reason: str  # "stop" (EOS) or "length"
    trace: list[StepEvent] = field(repr=False)
    prompt_tokens: int = 0
    wall_ms: float = 0.0  # whole generation
    forward_ms: float = 0.0  # sum of the forwards
    sampler: str = ""  # the sampler that ran (sampler auto resolved for the model)

    @property
    def steps(self) -> int:
        return len(self.trace)

    @property
    def tokens_per_forward(self) -> float:
        """Positions committed per forward (the verified sampler's mean accepted length: kept
        drafts + the AR token); 0 before any forward."""
        return sum(len(e.committed) for e in self.trace) / len(self.trace) if self.trace else 0.0

    @property
    def drafts(self) -> tuple[int, int]:
        """(kept, checked): the verified sampler's drafts over the forwards that checked any."""
        checking = [e for e in self.trace if e.drafted]
        return sum(len(e.committed) - 1 for e in checking), sum(e.drafted for e in checking)

    @property
    def looked_up(self) -> tuple[int, int]:
        """(kept, checked): the part of `drafts` that was copied (runtime/lookup.py, and the
        answer store's, runtime/answer_store.py)."""
        copying = [e for e in self.trace if e.looked_up]
        return sum(len(e.committed) - 1 for e in copying), sum(e.looked_up for e in copying)


def truncate_at_eos(tokens: list[int], eos: set[int]) -> tuple[list[int], str]:
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[:i], "stop"
    return tokens, "length"


def default_control(
    backend: Backend, talora: TaloraConfig | None = None, dgr=None, index=None
) -> AdapterControl:
    config = backend.config
    groups = len(config.timestep_groups) - 1
    return AdapterControl(config.adapter_slots, groups, config.vocab_size, talora, dgr, index)


def generate(
    backend: Backend,
    prompt: list[int],
    settings: GenerationSettings,
    rng: random.Random,
    control: AdapterControl | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    answers: AnswerStore | None = None,
) -> GenerationResult:
    """Generate after `prompt` (token ids). `rng` is consumed only at temperature > 0;
    `on_step` sees every step's partially unmasked text; `answers`: the model's answer store,
    which the verified sampler drafts from. Raises RuvdllmError on bad settings."""
    plan = resolve(settings, backend.config, len(prompt))
    settings = concrete(settings, backend.config)
    control = control or default_control(backend)
    control.start()
    trace: list[StepEvent] = []

    def record(event: StepEvent) -> None:
        trace.append(event)
        if on_step is not None:
            on_step(event)

    started = time.perf_counter()
    sampler = SAMPLER_FUNCTIONS[plan.sampler]
    if plan.sampler == "verified":
        sampler = partial(sampler, answers=answers)
    generated = sampler(backend, list(prompt), settings, plan, rng, control, record)
    wall_ms = (time.perf_counter() - started) * 1e3
    tokens, finish = generated, "length"
    if settings.stop_at_eos:
        tokens, finish = truncate_at_eos(generated, set(backend.config.eos_token_ids))
    return GenerationResult(
        tokens=tokens,
        finish_reason=finish,
        trace=trace,
        prompt_tokens=len(prompt),
        wall_ms=wall_ms,
        forward_ms=sum(e.forward_ms for e in trace),
        sampler=plan.sampler,
    )
