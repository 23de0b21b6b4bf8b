"""The accept/reject rule: whatever the draft distribution q, the token that comes out of one
check is distributed exactly as the target p — computed exactly over small vocabularies, with the
rule's own functions, and through `verify_token`'s use of its uniform draws."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.speculative import Candidates, acceptance, residual, row_distribution, sample, verify_token

VOCAB = 6


@st.composite
def distributions(draw_):
    """A distribution over a random subset of a small vocabulary (ids in random order)."""
    ids = draw_(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=VOCAB, unique=True))
    weights = draw_(st.lists(st.floats(0.01, 1.0), min_size=len(ids), max_size=len(ids)))
    total = sum(weights)
    return Candidates(tuple(ids), tuple(w / total for w in weights))


def output_distribution(target: Candidates, draft: Candidates) -> list[float]:
    """P(token out = y) of one check, summed exactly over the drafted x ~ q:
    q(y) · acceptance(p(y), q(y)) + Σ_x q(x) (1 − acceptance(p(x), q(x))) · residual(y)."""
    rejected = sum(
        q * (1.0 - acceptance(target.prob(x), q)) for x, q in zip(draft.ids, draft.probs, strict=True)
    )
    rest = residual(target, draft)
    out = [0.0] * VOCAB
    for y in range(VOCAB):
        q = draft.prob(y)
        kept = q * acceptance(target.prob(y), q) if q > 0 else 0.0
        out[y] = kept + rejected * rest.prob(y)
    return out


@given(target=distributions(), draft=distributions())
def test_one_check_outputs_the_target_distribution_exactly(target, draft):
    out = output_distribution(target, draft)
    for y in range(VOCAB):
        assert math.isclose(out[y], target.prob(y), abs_tol=1e-9)


@given(target=distributions(), draft=distributions())
def test_the_residual_is_a_distribution_on_the_target_support(target, draft):
    rest = residual(target, draft)
    assert math.isclose(sum(rest.probs), 1.0, rel_tol=1e-9)
    assert all(p >= 0 for p in rest.probs)
    assert set(i for i, p in zip(rest.ids, rest.probs, strict=True) if p > 0) <= set(target.ids)


class Uniforms(random.Random):
    """A Random whose random() returns the given numbers in order."""

    def __init__(self, values):
        super().__init__(0)
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


@given(target=distributions(), draft=distributions(), u=st.floats(0.0, 0.999999), v=st.floats(0.0, 0.999999))
def test_verify_token_keeps_iff_the_draw_is_below_the_acceptance(target, draft, u, v):
    token = draft.ids[0]
    rng = Uniforms([u, v])
    kept, out = verify_token(token, target, draft, rng)
    assert kept == (u < acceptance(target.prob(token), draft.prob(token)))
    if kept:
        assert out == token and rng.values == [v]  # one draw
    else:
        assert out == sample(residual(target, draft), Uniforms([v])) and rng.values == []


def test_agreeing_models_keep_every_draft():
    same = Candidates((3, 1, 2), (0.5, 0.3, 0.2))
    rng = random.Random(0)
    assert all(verify_token(t, same, same, rng) == (True, t) for t in (3, 1, 2) * 20)


def test_a_draft_outside_its_own_distribution_is_an_error():
    with pytest.raises(ValueError, match="not drafted"):
        verify_token(9, Candidates((1,), (1.0,)), Candidates((1,), (1.0,)), random.Random(0))


def test_row_distribution_is_choose_tokens_and_drops_the_mask_only_when_asked():
    ids, logits = [5, 7, 9], [2.0, 1.0, 0.0]
    full = row_distribution(ids, logits, 1.0, 0, 1.0)
    assert full.ids == (5, 7, 9) and math.isclose(sum(full.probs), 1.0)
    assert math.isclose(full.probs[0], math.exp(2) / (math.exp(2) + math.exp(1) + 1))
    assert row_distribution(ids, logits, 1.0, 0, 1.0, drop=7).ids == (5, 9)
    assert row_distribution(ids, logits, 0.5, 2, 1.0).ids == (5, 7)


@given(target=distributions(), token=st.integers(0, VOCAB - 1))
def test_a_point_mass_draft_is_kept_with_the_targets_probability(target, token):
    """Prompt lookup's drafts (runtime/lookup.py) are point masses: kept with probability p(x);
    a rejection draws from p without x — and one check still outputs p exactly."""
    draft = Candidates((token,), (1.0,))
    assert acceptance(target.prob(token), 1.0) == target.prob(token)
    rest = residual(target, draft)
    if target.prob(token) < 1.0:
        assert rest.prob(token) == 0.0
        others = 1.0 - target.prob(token)
        assert all(
            math.isclose(rest.prob(i), target.prob(i) / others, abs_tol=1e-9)
            for i in target.ids
            if i != token
        )
    out = output_distribution(target, draft)
    assert all(math.isclose(out[y], target.prob(y), abs_tol=1e-9) for y in range(VOCAB))


def test_point_mass_checks_sample_the_target():
    """Chi-square of many seeded checks of one copied draft against the target (1e-4 quantile of
    3 degrees of freedom: 21.1)."""
    target = Candidates((2, 0, 5, 1), (0.4, 0.3, 0.2, 0.1))
    rng, n = random.Random(7), 20000
    counts = dict.fromkeys(target.ids, 0)
    kept = 0
    for _ in range(n):
        was_kept, token = verify_token(0, target, Candidates((0,), (1.0,)), rng)
        counts[token] += 1
        kept += was_kept
    assert abs(kept / n - 0.3) < 0.02
    chi2 = sum((counts[i] - n * p) ** 2 / (n * p) for i, p in zip(target.ids, target.probs, strict=True))
    assert chi2 < 21.1, chi2
