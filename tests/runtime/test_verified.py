"""The verified sampler over the toy backend, whose rows depend on exactly what they see (tokens,
positions, adapter weights, adapter gate) and whose cached keys remember what they saw: the AR
model of the toy is its gate-0 causal rows. At temperature 0 the verified sampler must produce
that model's greedy tokens whatever the drafter proposes; when sampling, its tokens must follow
that model's distribution (checked against the exact distribution on a five-token vocabulary)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from runtime.answer_store import AnswerStore
from runtime.backend import Chunk
from runtime.drafting import FULL_BLOCK, Drafting, draft_count
from runtime.generate import generate
from runtime.lookup import lookup
from runtime.sampling import candidate_probs
from runtime.settings import GenerationSettings
from runtime.verified import verified_chunk
from ruvdllm.errors import RuvdllmError
from tests.runtime.toy_backend import TOY_CONFIG, ToyBackend

# Five tokens (the mask is the fifth) and all of them in the top-K: the toy drafter then agrees
# with the AR model often enough to exercise kept drafts, and distributions are exact.
SMALL = replace(TOY_CONFIG, vocab_size=5, top_k=5, mask_token_id=4, eos_token_ids=(0,))

# The block-sizing rules the output must not depend on: the default (adaptive), the full block
# every forward, a one-forward window, and a confidence cut that drops many of the toy's drafts.
RULES = {
    "default": Drafting(),
    "adaptive": Drafting(lookup="off"),
    "full-block": FULL_BLOCK,
    "window-1": Drafting(window=1),
    "confident": Drafting(min_confidence=0.4),
    "paused": Drafting(pause_below=0.8, probe_every=3),
    "lookup-fallback": Drafting(lookup="fallback"),
    "lookup-first": Drafting(lookup="first", lookup_longest=4, lookup_shortest=2, lookup_drafts=6),
    "lookup-paused": Drafting(lookup="first", pause_below=0.8, probe_every=3),
}


def oracle_row(backend: ToyBackend, context: list[int]):
    """The AR model's row after `context`, from one uncached forward of all of it (gate 0, causal):
    written apart from the samplers, which cache."""
    backend.reset()
    n = len(context)
    slots = backend.config.adapter_slots
    out = backend.forward(
        Chunk(context, list(range(n)), list(range(n)), n - 1, [[0.0] * slots] * n, [0.0] * n)
    )
    backend.reset()
    return out.topk_ids[0], out.topk_logits[0]


def oracle_greedy(config, prompt: list[int], length: int, stop_at_eos: bool) -> list[int]:
    backend = ToyBackend(config)
    tokens = list(prompt)
    while len(tokens) - len(prompt) < length:
        tokens.append(oracle_row(backend, tokens)[0][0])
        if stop_at_eos and tokens[-1] in config.eos_token_ids:
            break
    return tokens[len(prompt) :]


def run(config, prompt, seed=0, **settings):
    settings.setdefault("stop_at_eos", False)
    return generate(ToyBackend(config), prompt, GenerationSettings(**settings), random.Random(seed))


@pytest.mark.parametrize("config", [TOY_CONFIG, SMALL], ids=["vocab40", "vocab5"])
@pytest.mark.parametrize("block", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("prompt", [[7], [3, 1, 2, 9, 11]])
@pytest.mark.parametrize("rule", RULES.values(), ids=RULES.keys())
def test_greedy_verified_equals_the_ar_model(config, block, prompt, rule):
    prompt = [t % config.vocab_size for t in prompt]
    want = oracle_greedy(config, prompt, 40, stop_at_eos=False)
    verified = run(config, prompt, sampler="verified", length=40, block_size=block, drafting=rule)
    ar = run(config, prompt, sampler="ar", length=40)
    assert verified.tokens == want
    assert ar.tokens == want
    assert ar.steps == 40 and verified.steps <= 40
    assert sum(len(e.committed) for e in verified.trace) == 40  # every forward commits >= 1 token


@pytest.mark.parametrize("block", [2, 4])
def test_drafts_are_kept_and_the_forwards_fall(block):
    result = run(SMALL, [1, 2], sampler="verified", length=120, block_size=block, drafting=FULL_BLOCK)
    kept = [len(e.committed) - 1 for e in result.trace]
    drafted = [e.drafted for e in result.trace]
    assert sum(kept) > 10 and result.steps < 110
    if block == 2:
        assert any(k == d > 0 for k, d in zip(kept, drafted, strict=True))  # a forward's drafts all kept
    else:
        assert any(k >= 2 for k in kept)  # several drafts kept in one forward
    assert any(k < d for k, d in zip(kept, drafted, strict=True))  # and some rejected
    assert all(k <= d <= block - 1 for k, d in zip(kept, drafted, strict=True))


@pytest.mark.parametrize("length", range(1, 14))
def test_the_steps_shown_never_pass_the_length_asked_for(length):
    # the last forward's bonus token once showed one token more than the result (and the CLI
    # printed it): what a viewer sees step by step must end as the result does
    for block, rule in itertools.product([2, 4, 8], [FULL_BLOCK, Drafting(lookup="first")]):
        result = run(SMALL, [1, 2], sampler="verified", length=length, block_size=block, drafting=rule)
        assert len(result.tokens) == length
        assert all(len(e.tokens) <= length for e in result.trace)
        assert sum(len(e.committed) for e in result.trace) == length
        assert result.trace[-1].tokens == result.tokens


def test_stop_at_eos_cuts_where_the_ar_model_stops():
    for prompt in ([1], [2, 3], [3]):
        want = oracle_greedy(SMALL, prompt, 60, stop_at_eos=True)
        got = run(SMALL, prompt, sampler="verified", length=60, block_size=4, stop_at_eos=True)
        assert got.tokens == [t for t in want if t not in SMALL.eos_token_ids]


def test_greedy_consumes_no_randomness_and_sampling_is_seeded():
    rng = random.Random(3)
    state = rng.getstate()
    generate(ToyBackend(SMALL), [1], GenerationSettings(sampler="verified", length=12, block_size=3), rng)
    assert rng.getstate() == state
    a = run(SMALL, [1], sampler="verified", length=20, block_size=3, temperature=0.9, seed=4)
    b = run(SMALL, [1], sampler="verified", length=20, block_size=3, temperature=0.9, seed=4)
    c = run(SMALL, [1], sampler="verified", length=20, block_size=3, temperature=0.9, seed=5)
    assert a.tokens == b.tokens != c.tokens


def exact_ar_distribution(prompt: list[int], length: int, temperature: float) -> dict[tuple, float]:
    """P(first `length` tokens) of the AR model sampled at `temperature` (all candidates kept)."""
    backend = ToyBackend(SMALL)
    probs = {}
    for sequence in itertools.product(range(SMALL.vocab_size), repeat=length):
        p, context = 1.0, list(prompt)
        for token in sequence:
            ids, logits = oracle_row(backend, context)
            row = dict(zip(ids, candidate_probs(logits, temperature, 0, 1.0), strict=True))
            p *= row.get(token, 0.0)
            context.append(token)
        probs[sequence] = p
    return probs


# (at length 2 nothing is drafted: the one draft would only be checked by the forward that
# writes the last token anyway)
@pytest.mark.parametrize(("length", "block", "samples"), [(3, 2, 6000), (3, 3, 6000)])
@pytest.mark.parametrize(
    "rule",
    [
        FULL_BLOCK,
        Drafting(window=1, min_confidence=0.4, lookup="off"),
        Drafting(lookup="first", lookup_shortest=1),
        Drafting(lookup="fallback", lookup_shortest=1),
    ],
    ids=["full", "cut", "lookup-first", "lookup-fallback"],
)
def test_sampling_keeps_the_ar_distribution(length, block, samples, rule):
    """Chi-square of the verified sampler's first tokens against the exact AR distribution: the
    critical value is the 1e-4 quantile (124 degrees of freedom); seeded, so stable.
    Under prompt lookup the prompt repeats a token, so copied drafts come from the first forward
    on (point masses: kept with probability p_AR(token), else a draw from p_AR without it)."""
    prompt, temperature = ([1, 3] if rule.lookup == "off" else [1, 3, 1]), 1.0
    exact = exact_ar_distribution(prompt, length, temperature)
    backend = ToyBackend(SMALL)
    settings = GenerationSettings(
        sampler="verified",
        length=length,
        block_size=block,
        temperature=temperature,
        stop_at_eos=False,
        drafting=rule,
    )
    counts = dict.fromkeys(exact, 0)
    drafted = kept = copied = copied_kept = 0
    for seed in range(samples):
        result = generate(backend, prompt, settings, random.Random(seed))
        counts[tuple(result.tokens)] += 1
        drafted += sum(e.drafted for e in result.trace)
        kept += sum(len(e.committed) - 1 for e in result.trace)
        copied_kept, copied = copied_kept + result.looked_up[0], copied + result.looked_up[1]
    assert 0 < kept < drafted  # both halves of the rule ran
    if rule.lookup != "off":
        assert 0 < copied_kept < copied  # ... on copied drafts too
    chi2 = sum((counts[s] - samples * p) ** 2 / (samples * p) for s, p in exact.items() if p > 0)
    critical = {3: 183.0}[length]
    assert chi2 < critical, chi2


class CountingBackend(ToyBackend):
    """The toy, remembering how many drafter rows (gate 1) each forward carried."""

    def __init__(self, config):
        super().__init__(config)
        self.masks: list[int] = []

    def forward(self, chunk):
        self.masks.append(int(sum(chunk.adapter_gate or [])))
        return super().forward(chunk)


@pytest.mark.parametrize("block", [2, 4, 8])
@pytest.mark.parametrize(
    "rule",
    [
        Drafting(),
        Drafting(window=2),
        FULL_BLOCK,
        Drafting(pause_below=0.8, probe_every=3),
        Drafting(lookup="first"),
        Drafting(lookup="first", block_beside_drafts=True),
        Drafting(lookup="fallback", pause_below=0.8, probe_every=3),
    ],
    ids=["w4", "w2", "full", "paused", "lookup-first", "lookup-first-block-beside", "lookup-fallback-paused"],
)
def test_each_forward_drafts_what_the_rule_says(block, rule):
    """Golden against the rule: forward i carries draft_count(kept so far, idle) + 1 masks, none
    when that is 0 (and fewer at the end of the answer, none where they would draft nothing), where `kept so far` lists the forwards
    before i that checked the diffusion model's drafts (copied ones say nothing about the block)
    and `idle` counts the forwards since the last with masks."""
    backend = CountingBackend(SMALL)
    length, prompt = 80, [1, 2]
    settings = GenerationSettings(
        sampler="verified", length=length, block_size=block, stop_at_eos=False, drafting=rule
    )
    result = generate(backend, prompt, settings, random.Random(0))
    recent, committed, idle = [], 0, 0
    for event, masks in zip(result.trace, backend.masks, strict=True):
        wanted = draft_count(recent, block, rule, idle, checking=event.drafted)
        room = length - committed - event.drafted  # positions left from the first mask on
        # a block ends two short of the length (its drafts' check adds a token); one mask drafts nothing
        block_rows = min(wanted + 1 if wanted else 0, room - 1)
        assert masks == (block_rows if block_rows > 1 else 0), (recent, masks)
        if event.drafted and not event.looked_up:
            recent.append(len(event.committed) - 1)
        committed += len(event.committed)
        idle = 0 if masks else idle + 1
    if rule.pause_below:
        assert 0 in backend.masks  # the toy drafter is poor enough to pause it
    if rule.lookup != "off":
        assert any(e.looked_up for e in result.trace)
    beside = [masks for e, masks in zip(result.trace, backend.masks, strict=True) if e.drafted]
    assert any(beside) == rule.block_beside_drafts  # the rule above, not vacuous either way


@pytest.mark.parametrize("mode", ["fallback", "first"])
def test_copied_drafts_are_checked_like_the_diffusion_drafts(mode):
    """A forward's drafts come from one drafter; copied ones are at most `lookup_drafts`, come
    from the committed text (runtime/lookup.py) and are replaced by the AR token where wrong."""
    rule = Drafting(lookup=mode, lookup_drafts=3)
    prompt = [1, 2]
    result = run(SMALL, prompt, sampler="verified", length=120, block_size=4, drafting=rule)
    assert result.tokens == oracle_greedy(SMALL, prompt, 120, stop_at_eos=False)
    kept, copied = result.looked_up
    assert 0 < kept < copied
    text = list(prompt)
    for event in result.trace:
        assert event.looked_up in (0, event.drafted) and event.looked_up <= 3
        if event.looked_up:  # the copied drafts are lookup's, and the kept ones lead the commit
            room = len(prompt) + 120 - len(text) - 1
            proposed = lookup(text, rule.lookup_longest, rule.lookup_shortest, min(3, room))
            committed = [event.committed[k] for k in sorted(event.committed)]
            assert len(proposed) == event.looked_up
            assert proposed[: len(committed) - 1] == committed[:-1]
        text += [event.committed[k] for k in sorted(event.committed)]


def test_a_drafter_that_is_seldom_right_drafts_one_token():
    """The default model's case: with the block sized by acceptance, the forwards after the first
    few carry two masks, not the full block (so they cost about as much as a one-row forward)."""
    backend = CountingBackend(TOY_CONFIG)  # 40 tokens: the toy drafter is almost never right
    unpaused = Drafting(pause_below=0.0, block_beside_drafts=True)  # a block every forward: the sizing alone
    generate(
        backend,
        [3],
        GenerationSettings(sampler="verified", length=60, block_size=8, stop_at_eos=False, drafting=unpaused),
        random.Random(0),
    )
    assert backend.masks[0] == 8  # the first forward gives the drafter the benefit of the doubt
    assert max(backend.masks[6:]) <= 3 and backend.masks.count(2) > len(backend.masks) // 2
    paused = CountingBackend(TOY_CONFIG)
    settings = GenerationSettings(
        sampler="verified", length=60, block_size=8, stop_at_eos=False, drafting=Drafting(pause_below=0.5)
    )
    generate(paused, [3], settings, random.Random(0))
    assert paused.masks.count(0) > len(paused.masks) // 2  # mostly one-row AR forwards, and probes
    assert all(paused.masks[i : i + 5] != [0] * 5 for i in range(len(paused.masks) - 4))


def test_the_chunk_puts_ar_rows_before_the_drafter_block():
    chunk = verified_chunk([5, 6, 7, 8], 2, [9, 10], 3, 4, [[0.5, 0.5]] * 3, 2)
    assert chunk.input_ids == [7, 8, 9, 10, 4, 4, 4]
    assert chunk.position_ids == [2, 3, 4, 5, 6, 7, 8]
    assert chunk.block_ids == [0, 1, 2, 3, 4, 4, 4]
    assert chunk.adapter_gate == [0.0] * 4 + [1.0] * 3
    assert chunk.adapter_weights == [[0.0, 0.0]] * 4 + [[0.5, 0.5]] * 3
    assert chunk.output_offset == 1  # the last committed token's row predicts the first draft


def test_bad_settings_are_one_line_errors():
    with pytest.raises(RuvdllmError, match="takes no steps"):
        run(SMALL, [1], sampler="verified", length=8, steps=2)
    switchless = replace(SMALL, source={"static_adapter": {"linears": 7}}, adapter_gate=False)
    for sampler in ("verified", "ar"):
        with pytest.raises(RuvdllmError, match="no per-row switch"):
            run(switchless, [1], sampler=sampler, length=8)
    run(replace(switchless, adapter_gate=True), [1], sampler="verified", length=8)


def test_the_result_reports_the_mean_accepted_length():
    result = run(SMALL, [1, 2], sampler="verified", length=60, block_size=4, drafting=FULL_BLOCK)
    kept, checked = result.drafts
    assert 0 < kept < checked
    assert result.tokens_per_forward == pytest.approx(1 + kept / result.steps)  # each: + the AR's token
    assert result.tokens_per_forward > 1
    ar = run(SMALL, [1, 2], sampler="ar", length=20)
    assert ar.tokens_per_forward == 1.0 and ar.drafts == (0, 0)


def toy_answer_store(config, prompts=([1], [2, 3], [3, 1])) -> AnswerStore:
    """The toy AR model's own greedy answers to `prompts` (what the store is built from in
    earnest), and as many random answers, so that some of its drafts are wrong."""
    rng = random.Random(0)
    pairs = [(p, oracle_greedy(config, p, 30, stop_at_eos=False)) for p in prompts]
    pairs += [([], [rng.randrange(config.vocab_size) for _ in range(30)]) for _ in range(3)]
    return AnswerStore.build(pairs, config.vocab_size, longest=3, shortest=1, min_count=1)


# lookup asks for 6-grams, which the toy's text seldom repeats: the store drafts most forwards
STORE_FIRST = Drafting(lookup="first", lookup_longest=6, lookup_shortest=6, answers_floor=0.0)


@pytest.mark.parametrize("config", [TOY_CONFIG, SMALL], ids=["vocab40", "vocab5"])
@pytest.mark.parametrize("block", [1, 2, 4, 8])
@pytest.mark.parametrize("prompt", [[1], [3, 1, 2, 9, 11]])
def test_greedy_verified_with_an_answer_store_equals_the_ar_model(config, block, prompt):
    prompt = [t % config.vocab_size for t in prompt]
    store = toy_answer_store(config, [prompt, [2, 3]])
    settings = GenerationSettings(
        sampler="verified", length=40, block_size=block, drafting=STORE_FIRST, stop_at_eos=False
    )
    result = generate(ToyBackend(config), prompt, settings, random.Random(0), answers=store)
    assert result.tokens == oracle_greedy(config, prompt, 40, stop_at_eos=False)
    kept, copied = result.looked_up
    assert copied > 0 and kept > 0  # the store drafted, and some of its drafts held
    without = generate(
        ToyBackend(config),
        prompt,
        replace(settings, drafting=replace(STORE_FIRST, answers=False)),
        random.Random(0),
        answers=store,
    )
    assert without.tokens == result.tokens and without.looked_up[1] < copied


def test_the_store_drafts_only_where_lookup_finds_nothing():
    """Each copied draft is lookup's when lookup finds a match, else the store's chain, at most
    `lookup_drafts` of them; the kept ones lead the commit."""
    rule = Drafting(lookup="first", lookup_drafts=3, answers_floor=0.0)
    store = toy_answer_store(SMALL)
    prompt = [1, 2]
    settings = GenerationSettings(
        sampler="verified", length=80, block_size=4, drafting=rule, stop_at_eos=False
    )
    result = generate(ToyBackend(SMALL), prompt, settings, random.Random(0), answers=store)
    text = list(prompt)
    for event in result.trace:
        if event.looked_up:
            room = min(3, len(prompt) + 80 - len(text) - 1)
            proposed = lookup(text, rule.lookup_longest, rule.lookup_shortest, room) or store.draft(
                text, room
            )
            committed = [event.committed[k] for k in sorted(event.committed)]
            assert len(proposed) == event.looked_up
            assert proposed[: len(committed) - 1] == committed[:-1]
        text += [event.committed[k] for k in sorted(event.committed)]


def test_sampling_with_an_answer_store_keeps_the_ar_distribution():
    """As test_sampling_keeps_the_ar_distribution, the drafts from the store (point masses)."""
    prompt, length, samples, temperature = [1, 3], 2, 4000, 1.0
    exact = exact_ar_distribution(prompt, length, temperature)
    store = toy_answer_store(SMALL)
    settings = GenerationSettings(
        sampler="verified",
        length=length,
        block_size=2,
        temperature=temperature,
        stop_at_eos=False,
        drafting=STORE_FIRST,
    )
    counts = dict.fromkeys(exact, 0)
    copied = copied_kept = 0
    for seed in range(samples):
        result = generate(ToyBackend(SMALL), prompt, settings, random.Random(seed), answers=store)
        counts[tuple(result.tokens)] += 1
        copied_kept, copied = copied_kept + result.looked_up[0], copied + result.looked_up[1]
    assert 0 < copied_kept < copied
    chi2 = sum((counts[s] - samples * p) ** 2 / (samples * p) for s, p in exact.items() if p > 0)
    assert chi2 < 56.4, chi2  # the 1e-4 quantile at 24 degrees of freedom
