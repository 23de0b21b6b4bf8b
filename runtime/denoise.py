"""One span's denoising loop and its per-step decisions (docs/sampling.md §4), shared by the
MDLM and BD3LM samplers. The decisions are pure functions of the step's outputs and the rng.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import takewhile

from runtime.backend import StepOutput
from runtime.control import AdapterControl
from runtime.sampling import choose_token, confidence, drop_token
from runtime.schedules import make_schedule, unmask_counts
from runtime.settings import GenerationSettings

Span = list  # list[int | None]: a committed token, or None while masked


@dataclass(frozen=True)
class Proposal:
    position: int  # in the span
    token: int
    confidence: float  # temperature-1 probability under the full vocabulary
    entropy: float = 0.0  # nats, of the row's full-vocabulary distribution (the graph's output)


@dataclass(frozen=True)
class StepEvent:
    """What `on_step` receives after every denoising step."""

    span: int  # span index: the block for BD3LM, 0 for MDLM
    step: int  # step within the span
    t: float  # masked fraction of the span before this step
    committed: dict[int, int]  # position in the generated text -> token, committed this step
    tokens: list  # the generated text so far (list[int | None]; None where still masked)
    retrieved: list[int]  # generated positions DGR retrieved adapters for after this step
    forward_ms: float  # time of this step's forward
    drafted: int = 0  # drafts this forward checked against the AR model (verified sampler only)
    # of those, the ones prompt lookup copied (all or none); the rest are the diffusion model's
    looked_up: int = 0
    # The step's uncertainty over the positions it proposed for (the learning loops record it):
    entropy: float = 0.0  # mean entropy, nats
    confidence: float = 1.0  # mean confidence of the proposed tokens
    patterns: tuple = ()  # (pattern, similarity) DGR retrieved after this step
    # The span's (verified: the drafted block's) first position in the generated text: the
    # control's retrieved weights are keyed by position relative to it
    offset: int = 0
    # The generated position output row 0 predicted, where the rows are not the span's (the ar and
    # verified samplers' AR rows: row r predicted position first_row + r); None: row r predicted
    # the span's position r (the diffusion samplers)
    first_row: int | None = None


def propose(
    masked: Sequence[int], output: StepOutput, mask_id: int, settings: GenerationSettings, rng: random.Random
) -> list[Proposal]:
    """A token and its confidence for every masked position, ascending (the rng order)."""
    proposals = []
    for i in masked:
        ids, logits = drop_token(output.topk_ids[i], output.topk_logits[i], mask_id)
        j = choose_token(ids, logits, settings.temperature, settings.top_k, settings.top_p, rng)
        p = confidence(float(logits[j]), float(output.logsumexp[i]))
        proposals.append(Proposal(i, int(ids[j]), p, float(output.entropy[i])))
    return proposals


def ranked(proposals: Sequence[Proposal], order: str = "confidence") -> list[Proposal]:
    """The order in which positions are committed: "confidence" (most confident first, ties to
    the lower position) or "left-to-right" (the leftmost masked first, as the AR parent writes)."""
    if order == "left-to-right":
        return sorted(proposals, key=lambda p: p.position)
    return sorted(proposals, key=lambda p: (-p.confidence, p.position))


def most_confident(proposals: Sequence[Proposal], n: int) -> list[Proposal]:
    """Low-confidence remasking: keep the n most confident; ties go to the lower position."""
    return ranked(proposals)[:n]


def above_threshold(order: Sequence[Proposal], threshold: float) -> list[Proposal]:
    """Fast-dLLM parallel decoding: the leading proposals of `order` at or above the threshold,
    at least the first. In confidence order that is every proposal above the threshold."""
    chosen = list(takewhile(lambda p: p.confidence >= threshold, order))
    return chosen or list(order[:1])


def entropy_bounded(order: Sequence[Proposal], bound: float) -> list[Proposal]:
    """EB-sampler (Ben-Hamu et al. 2025): the longest prefix of `order` whose summed entropy minus
    its largest entropy stays within `bound` nats. The sum bounds the error of committing the
    prefix together rather than one by one; leaving out the largest always admits the first, so
    every step commits at least one position. The sum only grows along the prefix."""
    chosen: list[Proposal] = []
    total = largest = 0.0
    for p in order:
        total += p.entropy
        largest = max(largest, p.entropy)
        if chosen and total - largest > bound:
            break
        chosen.append(p)
    return chosen


def choose_positions(
    proposals: Sequence[Proposal], settings: GenerationSettings, count: int
) -> list[Proposal]:
    """The positions one step commits: `settings.order` ranks them, `settings.decoding` says how
    many lead the ranking (`count`, the schedule's n_s, for low-confidence remasking)."""
    order = ranked(proposals, settings.order)
    if settings.decoding == "threshold":
        return above_threshold(order, settings.threshold)
    if settings.decoding == "entropy-bounded":
        return entropy_bounded(order, settings.entropy_bound)
    return order[:count]


def denoise_span(
    length: int,
    steps: int,
    forward: Callable[[Span, float], StepOutput],
    settings: GenerationSettings,
    mask_id: int,
    rng: random.Random,
    control: AdapterControl,
    on_step: Callable[[StepEvent], None],
    index: int = 0,
    before: Sequence[int] = (),
) -> list[int]:
    """Denoise `length` masked positions: forward, propose, commit, retrieve — until none is
    masked. The span is span `index` of the generation and follows its `before` tokens (the
    blocks committed earlier); `on_step` receives a StepEvent after every step."""
    offset = len(before)  # the span's first position in the generated text
    span: Span = [None] * length
    counts = None
    if settings.decoding == "low-confidence":
        counts = unmask_counts(length, steps, make_schedule(settings.schedule))
    control.start_span()
    step = 0
    while None in span:
        masked = [i for i, token in enumerate(span) if token is None]
        t = len(masked) / length
        started = time.perf_counter()
        output = forward(span, t)
        forward_ms = (time.perf_counter() - started) * 1e3
        proposals = propose(masked, output, mask_id, settings, rng)
        chosen = choose_positions(proposals, settings, counts[step] if counts else 0)
        committed = {p.position: p.token for p in chosen}
        for position, token in committed.items():
            span[position] = token
        retrieved = control.after_step(output, [i for i in masked if span[i] is None], t, step)
        on_step(
            StepEvent(
                span=index,
                step=step,
                t=t,
                committed={offset + i: token for i, token in committed.items()},
                tokens=[*before, *span],
                retrieved=[offset + i for i in retrieved],
                forward_ms=forward_ms,
                entropy=sum(p.entropy for p in proposals) / len(proposals),
                confidence=sum(p.confidence for p in proposals) / len(proposals),
                patterns=control.step_patterns,
                offset=offset,
            )
        )
        step += 1
    return span
