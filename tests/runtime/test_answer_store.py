"""The answer store: its table equals a plain count of what followed each n-gram in the answers
(the longest known context wins, the most frequent follower, the smallest token on a tie, n-grams
seen fewer than min_count times dropped); drafts chain through it and stop at the floor; the file
round-trips exactly and a damaged or foreign one is refused with a one-line error."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.answer_store import AnswerStore, token_bits
from ruvdllm.errors import RuvdllmError

# few distinct tokens, so that contexts repeat
answers = st.lists(
    st.tuples(st.lists(st.integers(0, 4), max_size=4), st.lists(st.integers(0, 4), min_size=1, max_size=20)),
    min_size=1,
    max_size=12,
)


def brute_force(pairs, longest, shortest, min_count):
    """{n: {context tuple: (token, share)}} by counting, the definition the store implements."""
    follows = {n: collections.defaultdict(collections.Counter) for n in range(shortest, longest + 1)}
    for lead, answer in pairs:
        ids = [*lead[max(0, len(lead) - (longest - 1)) :], *answer]
        first = len(ids) - len(answer)
        for j in range(first, len(ids)):
            for n in follows:
                if j >= n:
                    follows[n][tuple(ids[j - n : j])][ids[j]] += 1
    tables = {}
    for n, contexts in follows.items():
        tables[n] = {}
        for context, counts in contexts.items():
            best = max(counts.values())
            token = min(t for t, c in counts.items() if c == best)
            if best >= min_count:
                tables[n][context] = (token, (best * 255 // sum(counts.values())) / 255)
    return tables


def expected_next(tables, tokens, longest, shortest):
    for n in range(longest, shortest - 1, -1):
        if len(tokens) >= n and tuple(tokens[len(tokens) - n :]) in tables[n]:
            return tables[n][tuple(tokens[len(tokens) - n :])]
    return None


@settings(max_examples=150, deadline=None)
@given(pairs=answers, min_count=st.integers(1, 3), query=st.lists(st.integers(0, 4), max_size=6))
def test_the_store_is_the_count_of_what_followed_each_context(pairs, min_count, query):
    store = AnswerStore.build(pairs, vocab_size=5, longest=3, shortest=1, min_count=min_count)
    tables = brute_force(pairs, 3, 1, min_count)
    for n, table in ((t.n, t) for t in store.tables):
        assert {store.pack(c) for c in tables[n]} == set(table.keys)
    assert store.next_token(query) == expected_next(tables, query, 3, 1)


@settings(max_examples=100, deadline=None)
@given(
    pairs=answers,
    query=st.lists(st.integers(0, 4), max_size=6),
    count=st.integers(0, 6),
    floor=st.sampled_from([0.0, 0.3, 0.6, 1.0]),
)
def test_a_draft_chains_next_tokens_until_the_floor(pairs, query, count, floor):
    store = AnswerStore.build(pairs, vocab_size=5, longest=3, shortest=1, min_count=1)
    drafted = store.draft(query, count, floor)
    assert len(drafted) <= count
    context = list(query)
    for token in drafted:  # each drafted token is the store's next token after what came before
        found = store.next_token(context)
        assert found is not None and found[0] == token and found[1] >= floor
        context.append(token)
    if len(drafted) < count:  # it stopped because nothing (sure enough) follows
        found = store.next_token(context)
        assert found is None or found[1] < floor


def test_examples():
    # "a b c" three times, "a b d" once: after "a b" comes c (3 of 4); "b" alone also gives c
    pairs = [([], [1, 2, 3])] * 3 + [([], [1, 2, 4])]
    store = AnswerStore.build(pairs, vocab_size=8, longest=2, shortest=1, min_count=2)
    assert store.next_token([1, 2]) == (3, (3 * 255 // 4) / 255)
    assert store.draft([9, 1], 4) == [2, 3]  # "1" -> 2, then "1 2" -> 3, then "2 3" unseen... "3" unseen
    assert store.draft([9, 1], 4, floor=0.9) == [2]  # 3 followed "1 2" only 75% of the time
    assert store.next_token([4]) is None  # nothing ever followed 4
    assert store.tables[-1].find(store.pack([4])) == -1
    # the lead gives the answer's first tokens their context, but is never predicted itself
    led = AnswerStore.build([([7, 7, 5], [6])] * 2, vocab_size=8, longest=3, shortest=1, min_count=1)
    assert led.next_token([7, 5]) == (6, 1.0) and led.next_token([7]) is None


def test_the_file_round_trips_and_is_atomic(tmp_path):
    pairs = [([0, 1], [2, 3, 4, 2, 3, 5]), ([1], [2, 3, 4])]
    store = AnswerStore.build(pairs, vocab_size=50_000, min_count=1, meta={"sources": ["x"]})
    path = tmp_path / "answers.ngrams"
    store.write(path)
    again = AnswerStore.read(path)
    assert again.to_bytes() == store.to_bytes()
    assert again.meta == store.meta and again.entries == store.entries > 0
    assert [t.n for t in again.tables] == [4, 3, 2]  # vocabulary under 2^16: 4-gram keys
    assert again.draft([0, 1, 2, 3], 3) == store.draft([0, 1, 2, 3], 3) == [4, 2, 3]
    assert not list(tmp_path.glob("*.partial"))


def test_large_vocabularies_pack_fewer_tokens_per_key():
    assert token_bits(49_152) == 16 and token_bits(151_936) == 18 and token_bits(2) == 1
    store = AnswerStore.build([([], [150_000, 1, 150_000, 1, 150_000])], vocab_size=151_936, min_count=1)
    assert max(t.n for t in store.tables) == 3  # 4 x 18 bits would not fit one 64-bit key
    assert store.tables[0].tokens.typecode == "I"
    assert AnswerStore.from_bytes(store.to_bytes()).draft([150_000, 1], 2) == [150_000, 1]


def test_tokens_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        AnswerStore.build([([], [1, 9])], vocab_size=8)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"XXXX" + b[4:], "not an answer store"),
        (lambda b: b[:-3], "truncated"),
        (lambda b: b + b"\0", "bytes after the last table"),
        (lambda b: b[:8] + b"!" + b[9:], "unreadable header"),
    ],
)
def test_a_damaged_file_is_a_one_line_error(tmp_path, damage, message):
    store = AnswerStore.build([([], [1, 2, 3, 1, 2, 4])], vocab_size=8, min_count=1)
    path = tmp_path / "answers.ngrams"
    path.write_bytes(damage(store.to_bytes()))
    with pytest.raises(RuvdllmError, match=message) as caught:
        AnswerStore.read(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_unsorted_keys_are_refused():
    store = AnswerStore.build([([], [1, 2, 3, 4, 5])], vocab_size=8, longest=1, shortest=1, min_count=1)
    table = store.tables[0]
    table.keys.reverse()
    with pytest.raises(RuvdllmError, match="not sorted"):
        AnswerStore.from_bytes(store.to_bytes())


def test_a_store_of_another_vocabulary_is_refused():
    store = AnswerStore.build([([], [1, 2, 3, 6])], vocab_size=8, min_count=1)
    store.check_model(8, "answers.ngrams")
    with pytest.raises(RuvdllmError, match="another vocabulary"):
        store.check_model(70_000, "answers.ngrams")
    with pytest.raises(RuvdllmError, match="another vocabulary"):
        store.check_model(5, "answers.ngrams")  # the same bit width, but token 6 is past its end


def format_1(store: AnswerStore) -> bytes:
    """The store as format 1 wrote it: the same header, the body uncompressed."""
    import json
    import struct

    header = {
        "format": 1,
        "bits": store.bits,
        "tables": [{"n": t.n, "entries": len(t.keys)} for t in store.tables],
        "meta": store.meta,
    }
    raw = json.dumps(header, sort_keys=True).encode()
    body = b"".join(values.tobytes() for t in store.tables for values in (t.keys, t.tokens, t.ratios))
    return b"RVAS" + struct.pack("<I", len(raw)) + raw + body


def test_a_format_1_store_reads_the_same_and_is_written_compressed():
    answers = [([], [1, 2, 3, 1, 2, 4, 1, 2, 3] * 20), ([5], [6, 7, 6, 7, 1, 2, 3])]
    store = AnswerStore.build(answers, vocab_size=8, min_count=1)
    old = AnswerStore.from_bytes(format_1(store))
    assert [(t.n, t.keys, t.tokens, t.ratios) for t in old.tables] == [
        (t.n, t.keys, t.tokens, t.ratios) for t in store.tables
    ]
    assert old.draft([1, 2], 4) == store.draft([1, 2], 4)
    assert old.to_bytes() == store.to_bytes() and len(store.to_bytes()) < len(format_1(store))
    data = store.to_bytes()
    body = 8 + int.from_bytes(data[4:8], "little")  # the compressed body's first byte
    with pytest.raises(RuvdllmError, match="x: corrupt body"):
        AnswerStore.from_bytes(data[:body] + b"\0\0" + data[body + 2 :], "x")
