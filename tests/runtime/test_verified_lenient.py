"""Lenient acceptance (runtime/drafting.py, `acceptance="lenient"`): the verified sampler also
keeps a draft the AR model finds nearly as likely as its own token. Over the toy backend, whose AR
model is its gate-0 causal rows: every token written is within the ratio of the AR model's top
token at its place; ratio 1 is the exact rule; a lenient check never keeps prompt lookup's copies
or a draft that repeats a bigram of the answer; and it keeps at least what the exact rule keeps."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.backend import StepOutput
from runtime.drafting import LENIENT, Drafting
from runtime.settings import GenerationSettings
from runtime.verified import AnswerBigrams, Draft, check_drafts
from ruvdllm.errors import RuvdllmError
from tests.runtime.test_verified import SMALL, oracle_greedy, oracle_row, run
from tests.runtime.toy_backend import TOY_CONFIG, ToyBackend


@pytest.mark.parametrize("config", [TOY_CONFIG, SMALL], ids=["vocab40", "vocab5"])
@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.6])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_every_token_is_nearly_as_likely_as_the_ar_models_own(config, ratio, temperature):
    prompt = [3 % config.vocab_size, 1]
    rule = replace(LENIENT, lenient_ratio=ratio)
    result = run(
        config, prompt, sampler="verified", length=40, block_size=4, drafting=rule, temperature=temperature
    )
    tokens = list(prompt)
    for token in result.tokens:
        ids, logits = oracle_row(ToyBackend(config), tokens)
        if temperature == 0.0:
            assert token in ids and logits[list(ids).index(token)] >= logits[0] + math.log(ratio) - 1e-9
        else:  # sampled tokens come from the AR model's candidates, or were kept within the ratio
            assert token in ids
        tokens.append(token)


@pytest.mark.parametrize("prompt", [[7], [3, 1, 2, 9, 11]])
def test_ratio_one_is_the_exact_rule(prompt):
    want = oracle_greedy(TOY_CONFIG, prompt, 40, stop_at_eos=False)
    got = run(
        TOY_CONFIG,
        prompt,
        sampler="verified",
        length=40,
        block_size=4,
        drafting=replace(LENIENT, lenient_ratio=1.0),
    )
    assert got.tokens == want


def output_of(rows: list[list[tuple[int, float]]]) -> StepOutput:
    """A forward's rows, each its (token, logit) candidates in descending order."""
    return StepOutput(
        topk_ids=[[t for t, _ in row] for row in rows],
        topk_logits=[[x for _, x in row] for row in rows],
        logsumexp=[math.log(sum(math.exp(x) for _, x in row)) for row in rows],
        entropy=[1.0] * len(rows),
        query=lambda row: [],
    )


GREEDY = GenerationSettings(sampler="verified", temperature=0.0, drafting=LENIENT)
# Row 0: token 5 is the AR model's, token 6 half as likely (kept at ratio 0.2), 7 a tenth (not).
ROWS = [[(5, 2.0), (6, 2.0 + math.log(0.5)), (7, 2.0 + math.log(0.1))], [(8, 1.0), (9, 0.0)], [(3, 1.0)]]


def test_a_draft_nearly_as_likely_is_kept_and_an_unlikely_one_is_not():
    out = output_of(ROWS)
    assert check_drafts([Draft(6, None), Draft(8, None)], out, GREEDY, random.Random(0)) == (2, 3)
    assert check_drafts([Draft(7, None), Draft(8, None)], out, GREEDY, random.Random(0)) == (0, 5)
    exact = replace(GREEDY, drafting=Drafting())
    assert check_drafts([Draft(6, None), Draft(8, None)], out, exact, random.Random(0)) == (0, 5)


def test_copies_of_the_text_and_repeated_bigrams_are_checked_exactly():
    out = output_of(ROWS)
    copied = [Draft(6, None, copied_from_text=True), Draft(8, None, copied_from_text=True)]
    assert check_drafts(copied, out, GREEDY, random.Random(0)) == (0, 5)
    # the answer ends with 2 and already holds the bigram (2, 6): 6 would repeat it
    assert check_drafts(
        [Draft(6, None), Draft(8, None)], out, GREEDY, random.Random(0), AnswerBigrams([2, 6, 1, 2])
    ) == (
        0,
        5,
    )
    assert check_drafts(
        [Draft(6, None), Draft(8, None)], out, GREEDY, random.Random(0), AnswerBigrams([2, 6, 1, 4])
    ) == (
        2,
        3,
    )


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.floats(-4.0, 4.0), min_size=3, max_size=3).map(sorted).map(lambda xs: xs[::-1]),
        min_size=4,
        max_size=4,
    ),
    drafts=st.lists(st.integers(0, 2), min_size=3, max_size=3),
    ratio=st.floats(0.01, 1.0),
)
def test_lenient_keeps_at_least_what_the_exact_rule_keeps(rows, drafts, ratio):
    out = output_of([[(t, x) for t, x in enumerate(row)] for row in rows])
    lenient = replace(GREEDY, drafting=replace(LENIENT, lenient_ratio=ratio))
    exact = replace(GREEDY, drafting=Drafting())
    proposed = [Draft(t, None) for t in drafts]
    kept_lenient, _ = check_drafts(proposed, out, lenient, random.Random(0))
    kept_exact, _ = check_drafts(proposed, out, exact, random.Random(0))
    assert kept_lenient >= kept_exact
    for i in range(kept_lenient):  # each kept draft is within the ratio of its row's top
        assert rows[i][drafts[i]] >= rows[i][0] + math.log(ratio) - 1e-9


def test_bad_lenient_settings_are_one_line_errors():
    for drafting, message in (
        (replace(LENIENT, acceptance="loose"), "acceptance 'loose': unknown"),
        (replace(LENIENT, lenient_ratio=0.0), "lenient_ratio 0.0: must be in"),
        (replace(LENIENT, lenient_ratio=1.5), "lenient_ratio 1.5: must be in"),
    ):
        with pytest.raises(RuvdllmError, match=message):
            run(SMALL, [1], sampler="verified", length=8, drafting=drafting)
