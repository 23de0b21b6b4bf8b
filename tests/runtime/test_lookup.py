"""Prompt lookup's matcher: what it proposes really followed an earlier occurrence of the text's
newest tokens, the longest such suffix wins, the most recent occurrence of it is the one copied,
and nothing is proposed past the end of the text or where nothing matches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runtime.lookup import lookup

# few distinct tokens, so that matches of every length occur
texts = st.lists(st.integers(0, 3), max_size=40)
lengths = st.tuples(st.integers(1, 5), st.integers(0, 4)).map(lambda t: (t[0] + t[1], t[0]))


def occurrences(tokens: list[int], n: int) -> list[int]:
    """Starts of earlier occurrences of the last n tokens that have a token after them."""
    if n >= len(tokens):
        return []
    return [s for s in range(len(tokens) - n) if tokens[s : s + n] == tokens[len(tokens) - n :]]


@given(tokens=texts, ngrams=lengths, count=st.integers(1, 8))
def test_the_proposal_follows_the_most_recent_occurrence_of_the_longest_suffix(tokens, ngrams, count):
    longest, shortest = ngrams
    proposal = lookup(tokens, longest, shortest, count)
    found = [n for n in range(shortest, longest + 1) if occurrences(tokens, n)]
    if not found:
        assert proposal == []
        return
    n = max(found)
    start = max(occurrences(tokens, n)) + n  # the token after the most recent occurrence
    assert proposal == tokens[start : start + count]
    assert 1 <= len(proposal) <= count and start + len(proposal) <= len(tokens)


@given(tokens=texts, ngrams=lengths)
def test_no_match_of_the_shortest_suffix_means_no_proposal(tokens, ngrams):
    longest, shortest = ngrams
    assert (lookup(tokens, longest, shortest, 4) == []) == (not occurrences(tokens, shortest))


def test_examples():
    # "the cat sat . the cat" -> "sat ." (trigram "the cat" found; stops at the text's end)
    assert lookup([1, 2, 3, 9, 1, 2], 3, 1, 4) == [3, 9, 1, 2]
    assert lookup([1, 2, 3, 9, 1, 2], 3, 1, 2) == [3, 9]
    assert lookup([5, 5, 5], 3, 1, 4) == [5]  # overlapping: the run goes on
    assert lookup([1, 2, 3], 3, 1, 4) == []  # the last token never occurred before
    assert lookup([7, 1, 8, 1], 2, 2, 4) == []  # only a unigram matches; bigrams asked
    assert lookup([7, 1, 8, 1], 2, 1, 4) == [8, 1]
    assert lookup([1, 4, 1, 5, 1], 1, 1, 1) == [5]  # the most recent of two occurrences
    assert lookup([], 3, 1, 4) == [] and lookup([3], 3, 1, 4) == []
