"""The verified sampler: the diffusion model drafts, the AR model it was converted from verifies
(speculative decoding with a diffusion drafter, as SpecDiff / DiffuSpec / S2D2), so the output is
the AR model's own — its greedy tokens at temperature 0, its distribution when sampling
(docs/sampling.md §11).

The same graph is both models: rows with adapter_gate 0 and causal block ids compute the base AR
model exactly; rows with gate 1 are the diffusion drafter. One forward does both jobs:

    input_ids     tokens[cached:]   d_0 .. d_{m-1}       M  M  ..  M          (b masks)
    adapter_gate  0 ..              0 ..                 1  1  ..  1
    block_ids     0 1 2 ..          .. v-1               v  v  ..  v          (v verifier rows)
                  └ AR rows: check the drafts, predict ┘  └ drafter: the next block, all masked
                    the next token                          at once, seeing every row before it

The cache only ever holds AR keys/values (gate 0, causal): exactly what the AR model would have
cached for the committed text. Per forward, drafts are checked left to right against the AR row
before each (greedy: equal to its argmax; sampling: the accept/reject rule); the first rejected
draft is replaced by the AR model's own token, and when every draft holds, the AR row after the
last one adds a bonus token. So every forward commits at least one token, the AR model's, and up
to m + 1. The mask block's rows are the next drafts, kept only when all drafts held (they saw
them). So by default only a forward that checks no drafts carries a mask block — the AR step
plus a fresh draft — since beside drafts the block was seldom kept (`block_beside_drafts`).

The mask block is sized per forward by `settings.drafting` (runtime/drafting.py): as many masks as
recent forwards' kept drafts justify, so that a drafter that is seldom right costs little more
than the one-row AR forward; and drafts stop at the first row the drafter is unsure of.

A second drafter is free: prompt lookup (runtime/lookup.py, `settings.drafting.lookup`) copies the
tokens that followed the last earlier occurrence of the committed text's newest few tokens. It
sees the newest token, which the mask block cannot (its first mask sits at that token's
position), and it drafts after a rejection too. Where it finds nothing, the model's answer store
(runtime/answer_store.py), when there is one, drafts what the model's past answers went on with.
Copied drafts, lookup's or the store's, are checked by the same rule as point masses (kept with
probability p_AR(token) when sampling). A forward's drafts come from one drafter; which one is a
function of committed tokens only.

The drafter is the diffusion model with its adapters, as in the diffusion samplers: each block
it drafts is one step of a fresh, all-masked block (t = 1), so its rows get TALoRA's weights of
t = 1, and DGR reads the drafter rows' uncertainty after the forward and retrieves adapters for
the next block, whichever forward drafts it — AdapterControl.after_step over the block, laid out
as a span (row i predicts block position i; row 0 is the AR row, which drafts nothing). The
verifier rows carry no adapter and cannot see the block, so neither changes the output. Each StepEvent carries the
drafts' uncertainty and the patterns retrieved, for the learning loops' trajectories.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runtime import speculative
from runtime.answer_store import AnswerStore
from runtime.autoregressive import ar_distribution, ar_token
from runtime.backend import Backend, Chunk, StepOutput, rows_from
from runtime.control import AdapterControl
from runtime.denoise import StepEvent
from runtime.drafting import confident_prefix, draft_count, row_confidence
from runtime.lookup import lookup
from runtime.settings import GenerationSettings, Plan
from runtime.speculative import Candidates


@dataclass(frozen=True)
class Draft:
    token: int
    dist: Candidates | None  # the distribution it was drawn from; None at temperature 0
    copied_from_text: bool = False  # prompt lookup's: lenient acceptance checks it exactly


def verified_chunk(
    tokens: list[int],
    cached: int,
    drafts: list[int],
    masks: int,
    mask_id: int,
    mask_rows: list[list[float]],
    slots: int,
) -> Chunk:
    """Uncached committed tokens and the drafts as AR rows (gate 0, causal, all `slots` adapter
    weights 0), then `masks` mask positions as one drafter block (gate 1, `mask_rows`)."""
    verifier = tokens[cached:] + drafts
    v = len(verifier)
    return Chunk(
        input_ids=verifier + [mask_id] * masks,
        position_ids=list(range(cached, cached + v + masks)),
        block_ids=list(range(v)) + [v] * masks,
        output_offset=len(tokens) - 1 - cached,
        adapter_weights=[[0.0] * slots for _ in range(v)] + mask_rows,
        adapter_gate=[0.0] * v + [1.0] * masks,
    )


def check_drafts(
    drafts: list[Draft],
    output: StepOutput,
    settings: GenerationSettings,
    rng: random.Random,
    answer: AnswerBigrams | None = None,
) -> tuple[int, int]:
    """(drafts kept, the AR token after them). Output row i is the AR row before draft i; row
    len(drafts) predicts the token after the last. `answer`: the bigrams generated so far (lenient
    acceptance's repetition check; kept drafts are added as they are kept)."""
    lenient = settings.drafting.acceptance == "lenient"
    answer = answer if answer is not None else AnswerBigrams()
    for i, draft in enumerate(drafts):
        if not (
            lenient and lenient_check(draft, answer) and nearly_as_likely(draft.token, output, i, settings)
        ):
            if settings.temperature <= 0.0:
                token = ar_token(output, i, settings, rng)
                kept = token == draft.token
            else:
                kept, token = speculative.verify_token(
                    draft.token, ar_distribution(output, i, settings), draft.dist, rng
                )
            if not kept:
                return i, token
        answer.extend([draft.token])
    return len(drafts), ar_token(output, len(drafts), settings, rng)


class AnswerBigrams:
    """The bigrams of the text generated so far, grown as tokens are committed (not rebuilt per
    forward: a long answer would make that quadratic)."""

    def __init__(self, tokens: Sequence[int] = ()):
        self.pairs: set[tuple[int | None, int]] = set()
        self.last: int | None = None
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            if self.last is not None:
                self.pairs.add((self.last, token))
            self.last = token


def lenient_check(draft: Draft, answer: AnswerBigrams) -> bool:
    """Whether lenient acceptance may keep `draft` without the exact check: not a copy of the text
    (prompt lookup's), and not repeating a bigram the answer already has. A lenient check there
    feeds repetition: kept leniently too, distinct-2 fell by 0.05 on 64 held-out prompts with
    Medusa's rule and by 0.015 with the ratio rule (benchmarks/README.md, "Decoding quality")."""
    return not draft.copied_from_text and (answer.last, draft.token) not in answer.pairs


def nearly_as_likely(token: int, output: StepOutput, row: int, settings: GenerationSettings) -> bool:
    """p_AR(token) >= lenient_ratio · p_AR(top) at `row`, read from the row's raw logits (the AR
    model's own probabilities, whatever the sampling temperature). A token outside the row's top-k
    candidates counts as unlikely."""
    floor = output.topk_logits[row][0] + math.log(settings.drafting.lenient_ratio)
    for candidate, logit in zip(output.topk_ids[row], output.topk_logits[row], strict=True):
        if int(candidate) == token:
            return logit >= floor
    return False


def new_drafts(
    output: StepOutput, rows: range, mask_id: int, settings: GenerationSettings, rng: random.Random
) -> list[Draft]:
    """One draft per drafter row, left to right, each drawn alone from its row (so the rule's
    exactness holds: a draft's distribution depends on nothing drawn after it); the rows after the
    first one less sure than `settings.drafting.min_confidence` draft nothing (that cut reads the
    rows only, never a drawn token, so it keeps the rule exact too)."""
    drafts = []
    s = settings
    floor = s.drafting.min_confidence
    if floor > 0.0:
        confidences = [
            row_confidence(output.topk_ids[r], output.topk_logits[r], output.logsumexp[r], mask_id)
            for r in rows
        ]
        rows = rows[: confident_prefix(confidences, floor)]
    for r in rows:
        ids, logits = output.topk_ids[r], output.topk_logits[r]
        if s.temperature <= 0.0:
            token = next(int(i) for i in ids if i != mask_id)
            drafts.append(Draft(token, None))
        else:
            dist = speculative.row_distribution(ids, logits, s.temperature, s.top_k, s.top_p, drop=mask_id)
            drafts.append(Draft(speculative.sample(dist, rng), dist))
    return drafts


def copied_drafts(
    tokens: list[int], room: int, settings: GenerationSettings, answers: AnswerStore | None = None
) -> list[Draft]:
    """Prompt-lookup drafts after `tokens` (runtime/lookup.py), at most `room`; where lookup finds
    none, the answer store's (when given and `settings.drafting.answers`). Each is a point mass:
    the rule keeps it with probability p_AR(token) and on rejection draws from p_AR without it, so
    the output stays the AR model's (docs/sampling.md §11)."""
    d = settings.drafting
    count = min(d.lookup_drafts, room)
    copied = lookup(tokens, d.lookup_longest, d.lookup_shortest, count)
    from_text = bool(copied)
    if not copied and answers is not None and d.answers and count > 0:
        copied = answers.draft(tokens, count, d.answers_floor)
    if settings.temperature <= 0.0:
        return [Draft(t, None, from_text) for t in copied]
    return [Draft(t, Candidates((t,), (1.0,)), from_text) for t in copied]


def draft_uncertainty(output: StepOutput, rows: range, mask_id: int) -> tuple[float, float]:
    """(mean entropy in nats, mean top-candidate probability) of the drafter rows `rows`, whatever
    was drawn from them (the probability of the greedy draft); (0, 1) when there are none."""
    if not rows:
        return 0.0, 1.0
    entropy = sum(output.entropy[r] for r in rows) / len(rows)
    sure = [
        row_confidence(output.topk_ids[r], output.topk_logits[r], output.logsumexp[r], mask_id) for r in rows
    ]
    return entropy, sum(sure) / len(sure)


def retrieve_for_next_block(
    control: AdapterControl, output: StepOutput, checked: int, masks: int, index: int
) -> list[int]:
    """DGR after a forward whose block drafted (the control's span emptied): the block as a span whose row i (output row
    checked + i) predicts block position i, all masked (t = 1), scored at the drafted positions
    1 .. masks - 1; what it retrieves weighs the next block's rows by position (as a diffusion
    span's next step), whichever forward drafts it. Returns the block positions retrieved for."""
    return control.after_step(rows_from(output, checked), list(range(1, masks)), 1.0, index)


def sample_verified(
    backend: Backend,
    prompt: list[int],
    settings: GenerationSettings,
    plan: Plan,
    rng: random.Random,
    control: AdapterControl,
    on_step: Callable[[StepEvent], None],
    answers: AnswerStore | None = None,
) -> list[int]:
    """Generate up to `settings.length` tokens after `prompt`: the AR model's tokens, drafted in
    blocks of at most `plan.span` masks by the diffusion model (and copied from the text or the
    answer store, as `settings.drafting` says).

    Args:
        backend: runs the graph (with the adapter switch) and holds the AR cache.
        prompt: token ids, at least one.
        settings: temperature / top-k / top-p of both models; stop_at_eos ends after an EOS.
        plan: the draft block (at most `plan.span` masks per forward, as `settings.drafting`
            sizes it), already checked.
        rng: the generation's random.Random; consumed only when temperature > 0, per forward:
            the drafts' accept draws in order (and one residual draw at a rejection, or the bonus
            draw), then one draw per new diffusion draft, left to right (copied drafts draw none).
        control: TALoRA weights for the drafter rows (t = 1: the block is all masked) and DGR's
            retrievals after each forward that drafted (module docstring).
        on_step: receives one StepEvent per forward; `drafted` counts the drafts it checked
            (`looked_up`: how many of them were copied, by lookup or from `answers`, all or none), its
            entropy / confidence are the new drafts' rows', `retrieved` the generated positions
            DGR retrieved for.
        answers: the model's answer store, lookup's fallback drafter (None: lookup alone).
    """
    mask_id = backend.config.mask_token_id
    eos = set(backend.config.eos_token_ids)
    backend.reset()
    control.start_span()
    tokens = list(prompt)  # committed: the prompt, then the AR model's tokens
    end = len(prompt) + settings.length
    generated: list[int] = []
    bigrams = AnswerBigrams()  # of `generated`: lenient acceptance's repetition check
    drafts: list[Draft] = []
    recent_kept: list[int] = []  # drafts kept by the forwards that checked diffusion drafts, latest last
    idle = 0  # forwards since the last one that drafted
    lookup_mode = settings.drafting.lookup
    index = 0
    while len(generated) < settings.length:
        looked_up = 0
        if lookup_mode != "off" and (lookup_mode == "first" or not drafts):
            # the diffusion drafts pending, if any, give way to copied ones; the AR row after the
            # drafts always adds a token, so more than `end - len(tokens) - 1` would be cut off
            copied = copied_drafts(tokens, end - len(tokens) - 1, settings, answers)
            if copied:
                drafts, looked_up = copied, len(copied)
        cached = backend.cached()
        first_mask = len(tokens) + len(drafts)  # the position the AR row after the drafts predicts
        wanted = draft_count(recent_kept, plan.span, settings.drafting, idle, checking=len(drafts))
        # The block's first row predicts first_mask (the AR row's token, not a draft) and its
        # drafts are checked by a forward that adds a token after them: so a block ends two short
        # of `end`, or its drafts' bonus token would pass the length (and show a token the
        # result then cuts). A block of one mask would draft nothing.
        masks = min(wanted + 1 if wanted else 0, end - first_mask - 1)
        masks = masks if masks > 1 else 0
        rows = control.rows(0, masks, 1.0)
        chunk = verified_chunk(tokens, cached, [d.token for d in drafts], masks, mask_id, rows, control.slots)
        started = time.perf_counter()
        output = backend.forward(chunk)
        forward_ms = (time.perf_counter() - started) * 1e3
        kept, token = check_drafts(drafts, output, settings, rng, bigrams)
        # AR keys/values of every committed token and kept draft; the new token leads the next chunk
        backend.commit(len(tokens) + kept)
        committed = [d.token for d in drafts[:kept]] + [token]
        checked = len(drafts)
        if checked and not looked_up:  # the block is sized by what the diffusion drafts keep
            recent_kept = [*recent_kept, kept][-max(1, settings.drafting.window) :]
        drafts = []
        if masks:  # the block just drafted used its retrievals; the next one is new
            control.start_span()  # (a forward without a block leaves them to the next block)
        entropy, confidence, retrieved, patterns = 0.0, 1.0, [], ()
        block_start = first_mask - len(prompt)  # the block's first position in the generated text
        if kept == checked and masks > 1:  # the mask block saw exactly the text now committed
            drafter = range(checked + 1, checked + masks)
            if control.record_query and control.embedding is None:
                # the prompt's key in the drafter's space (its first row sees the whole prompt),
                # where DGR's patterns live; after_step would take the AR row's instead
                control.embedding = output.query(checked + 1)
            drafts = new_drafts(output, drafter, mask_id, settings, rng)
            entropy, confidence = draft_uncertainty(output, drafter, mask_id)
            retrieved = [
                block_start + i for i in retrieve_for_next_block(control, output, checked, masks, index)
            ]
            patterns = control.step_patterns
        idle = 0 if masks else idle + 1
        offset = len(generated)
        bigrams.extend([token])  # the kept drafts are in already
        tokens += committed
        generated += committed
        on_step(
            StepEvent(
                span=index,
                step=0,
                t=1.0,
                committed={offset + i: t for i, t in enumerate(committed)},
                tokens=[*generated, *([None] * len(drafts))],
                retrieved=retrieved,
                forward_ms=forward_ms,
                drafted=checked,
                looked_up=looked_up,
                entropy=entropy,
                confidence=confidence,
                patterns=patterns,
                offset=block_start,
                first_row=offset,  # the AR row before the first draft
            )
        )
        index += 1
        if settings.stop_at_eos and eos.intersection(committed):
            break
    return generated
