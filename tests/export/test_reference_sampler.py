"""The torch reference sampler: its vectorised choice against the runtime's pure per-row helpers,
its schedule bookkeeping, and its BD3LM cache against recomputing everything."""

from __future__ import annotations

import functools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import sampling as runtime_sampling
from runtime.denoise import Proposal, choose_positions
from runtime.schedules import make_schedule, unmask_counts
from runtime.settings import GenerationSettings
from runtime.talora import TaloraConfig
from ruvdllm_export.reference import DiffusionLM
from ruvdllm_export.reference.control import Adapters, AdapterState
from ruvdllm_export.reference.sampler import (
    SamplingConfig,
    _chunk,
    choose,
    denoise_span,
    generate,
    select,
)
from tests.export.reference_models import tiny_checkpoint

torch.set_num_threads(1)
MASK = 7


@functools.cache
def tiny(architecture: str = "llama") -> DiffusionLM:
    _, spec, weights = tiny_checkpoint(architecture, seed=4)
    return DiffusionLM(spec, weights, mask_token_id=MASK, top_k=8)


# --- one step's choice, against the runtime's per-row functions --------------------------------


@st.composite
def candidate_rows(draw):
    rows, k = draw(st.integers(1, 5)), draw(st.integers(2, 8))
    ids, logits = [], []
    for _ in range(rows):
        row_ids = draw(st.lists(st.integers(0, 12), min_size=k, max_size=k, unique=True))
        row_logits = sorted(draw(st.lists(st.floats(-8, 8), min_size=k, max_size=k)), reverse=True)
        ids.append(row_ids)
        logits.append(row_logits)
    return torch.tensor(ids), torch.tensor(logits, dtype=torch.float32)


@settings(max_examples=150, deadline=None)
@given(
    rows=candidate_rows(),
    temperature=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
    top_k=st.integers(0, 4),
    top_p=st.sampled_from([1.0, 0.95, 0.5, 0.1]),
    seed=st.integers(0, 2**32),
)
def test_choose_matches_the_runtime_row_by_row(rows, temperature, top_k, top_p, seed):
    ids, logits = rows
    logsumexp = torch.logsumexp(logits, -1) + 0.5  # mass outside the top-K
    config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    rng_ref, rng_rt = random.Random(seed), random.Random(seed)
    tokens, confidence = choose(ids, logits, logsumexp, MASK, config, rng_ref)
    for r in range(ids.shape[0]):
        kept_ids, kept_logits = runtime_sampling.drop_token(ids[r].tolist(), logits[r].tolist(), MASK)
        state = rng_rt.getstate()
        j = runtime_sampling.choose_token(kept_ids, kept_logits, temperature, top_k, top_p, rng_rt)
        if kept_ids[j] != int(tokens[r]):  # only where u falls within rounding of a boundary
            rng_rt_copy = random.Random()
            rng_rt_copy.setstate(state)
            u = rng_rt_copy.random()
            probs = runtime_sampling.candidate_probs(kept_logits, temperature, top_k, top_p)
            boundaries = [sum(probs[: i + 1]) for i in range(len(probs))]
            assert min(abs(u - b) for b in boundaries) < 1e-12, (r, kept_ids[j], int(tokens[r]))
        expected = runtime_sampling.confidence(float(kept_logits[j]), float(logsumexp[r]))
        if kept_ids[j] == int(tokens[r]):
            assert float(confidence[r]) == pytest.approx(expected, rel=1e-12)
    assert rng_ref.getstate() == rng_rt.getstate()  # same draws, same order


def test_mask_token_is_never_chosen():
    ids = torch.tensor([[MASK, 3, 4], [5, MASK, 6]])
    logits = torch.tensor([[9.0, 1.0, 0.0], [2.0, 1.5, 1.0]])
    tokens, _ = choose(ids, logits, torch.tensor([10.0, 3.0]), MASK, SamplingConfig(), random.Random(0))
    assert tokens.tolist() == [3, 5]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from([0.1, 0.4, 0.4, 0.9, 0.95]), st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.5])),
        min_size=1,
        max_size=9,
    ),
    count=st.integers(1, 9),
    decoding=st.sampled_from(["low-confidence", "threshold", "entropy-bounded"]),
    order=st.sampled_from(["confidence", "left-to-right"]),
    bound=st.sampled_from([0.0, 0.3, 1.0, 3.0]),
)
def test_select_matches_the_runtime(rows, count, decoding, order, bound):
    """The vectorised choice of positions equals the runtime's per-proposal one, for every
    decoding and order, ties included (the confidences repeat)."""
    count = min(count, len(rows))
    config = SamplingConfig(decoding=decoding, threshold=0.9, entropy_bound=bound, order=order)
    confidence = torch.tensor([c for c, _ in rows], dtype=torch.float64)
    entropy = torch.tensor([h for _, h in rows], dtype=torch.float32)
    proposals = [Proposal(i, 0, c, float(entropy[i])) for i, (c, _) in enumerate(rows)]
    settings_ = GenerationSettings(decoding=decoding, threshold=0.9, entropy_bound=bound, order=order)
    expected = sorted(p.position for p in choose_positions(proposals, settings_, count))
    assert (
        select(confidence, entropy, count if decoding == "low-confidence" else None, config).tolist()
        == expected
    )


# --- whole generations ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["mdlm", "bd3lm"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_low_confidence_follows_the_schedule(algorithm, schedule):
    model = tiny()
    config = SamplingConfig(algorithm=algorithm, length=10, block_size=4, steps=3, schedule=schedule)
    result = generate(model, [1, 20, 30], config, random.Random(0))
    assert len(result.tokens) == 10 and MASK not in result.tokens
    spans = [10] if algorithm == "mdlm" else [4, 4, 2]
    expected = [n for size in spans for n in unmask_counts(size, min(3, size), make_schedule(schedule))]
    assert [len(step.committed) for step in result.steps] == expected
    assert result.steps[-1].tokens == result.tokens
    first = result.steps[0]
    assert first.t == 1.0 and sum(token is not None for token in first.tokens) == expected[0]


@pytest.mark.parametrize("algorithm", ["mdlm", "bd3lm"])
def test_threshold_decoding_commits_all_confident_positions(algorithm):
    model = tiny()
    low = generate(
        model,
        [1, 2],
        SamplingConfig(algorithm=algorithm, length=8, block_size=4, decoding="threshold", threshold=0.0),
        random.Random(0),
    )
    assert [len(step.committed) for step in low.steps] == ([8] if algorithm == "mdlm" else [4, 4])
    high = generate(
        model,
        [1, 2],
        SamplingConfig(algorithm=algorithm, length=8, block_size=4, decoding="threshold", threshold=1.01),
        random.Random(0),
    )
    assert all(len(step.committed) == 1 for step in high.steps) and len(high.steps) == 8


def test_seeded_and_reproducible():
    model = tiny("qwen2")
    config = SamplingConfig(algorithm="bd3lm", length=12, block_size=4, temperature=1.0, top_p=0.9)
    a = generate(model, [1, 5], config, random.Random(3)).tokens
    assert a == generate(model, [1, 5], config, random.Random(3)).tokens
    assert any(generate(model, [1, 5], config, random.Random(seed)).tokens != a for seed in (4, 5, 6))


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_bd3lm_cache_equals_recomputing_everything(architecture):
    """The committed-token cache (§3) changes nothing: a sampler that re-runs every committed
    token causally each step picks the same tokens."""
    model = tiny(architecture)
    config = SamplingConfig(algorithm="bd3lm", length=9, block_size=3, steps=2)
    prompt = [1, 40, 41, 42]
    cached = generate(model, prompt, config, random.Random(0)).tokens

    tokens = list(prompt)

    def forward(span, t):
        n, size = len(tokens), len(span)
        return model(
            torch.tensor([tokens + _chunk(span, MASK)]),
            torch.arange(n + size)[None],
            torch.tensor([list(range(n)) + [n] * size]),
            output_offset=n - 1,
        )

    while len(tokens) - len(prompt) < config.length:
        tokens += denoise_span(
            forward, 3, MASK, config, random.Random(0), AdapterState(None, model.spec.vocab_size)
        )
    assert cached == tokens[len(prompt) :]


def test_generation_stops_at_eos():
    model = tiny()
    config = SamplingConfig(algorithm="bd3lm", length=12, block_size=4)
    full = generate(model, [1, 9], config, random.Random(0)).tokens
    eos = full[5]  # a token of the second block
    cut = full.index(eos)
    stopped = generate(model, [1, 9], config, random.Random(0), eos_token_ids=(eos,))
    assert stopped.tokens == full[:cut]
    assert len(stopped.steps) == (8 if cut >= 4 else 4)  # stopped after the block holding it


def test_adapter_rows_follow_talora():
    """Committed rows carry talora_weights(0), span rows talora_weights(t); DGR slots are 0."""
    spec = tiny().spec
    bank = {
        "q_proj": (
            torch.zeros(spec.num_layers, spec.hidden_size, 10),
            torch.zeros(spec.num_layers, 10, spec.linear_features()["q_proj"].out_features),
        )
    }
    adapters = Adapters(bank, slots=5, groups=3, talora=TaloraConfig(interpolation="discrete"))
    inputs = AdapterState(adapters, spec.vocab_size).inputs(2, 2, 1.0)
    assert inputs["adapter_weights"].tolist() == [[[1, 0, 0, 0, 0]] * 2 + [[0, 0, 1, 0, 0]] * 2]


@pytest.mark.parametrize("algorithm", ["mdlm", "bd3lm"])
def test_zero_bank_changes_nothing_and_a_real_bank_does(algorithm):
    model = tiny()
    spec = model.spec
    generator = torch.Generator().manual_seed(0)
    slots, rank = 4, 2
    shapes = {target: spec.linear_features()[target] for target in ("q_proj", "down_proj")}
    bank = {
        target: (
            torch.randn(spec.num_layers, fan_in, slots * rank, generator=generator),
            torch.randn(spec.num_layers, slots * rank, fan_out, generator=generator),
        )
        for target, (fan_in, fan_out) in shapes.items()
    }
    zero = {target: (a * 0, b * 0) for target, (a, b) in bank.items()}
    config = SamplingConfig(algorithm=algorithm, length=8, block_size=4, steps=4)
    plain = generate(model, [1, 3, 5], config, random.Random(0)).tokens
    assert generate(model, [1, 3, 5], config, random.Random(0), Adapters(zero, slots)).tokens == plain
    assert generate(model, [1, 3, 5], config, random.Random(0), Adapters(bank, slots)).tokens != plain
