"""runtime/server/text_stream.py: streamed deltas from out-of-order commits add up to exactly the
final text — cut before an end-of-sequence token or a stop sequence, never showing half a UTF-8
character or half a stop sequence on the way."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.server.text_stream import TextStream, committed_prefix, find_stop, held_back
from tests.fixtures.tiny_models import TINY
from tests.fixtures.tiny_tokenizer import make_tokenizer

EOS = 256  # byte tokens 0..255, then the end of sequence


def decode_bytes(tokens: list[int]) -> str:
    return bytes(tokens).decode("utf-8", errors="replace")


def snapshots(tokens: list[int], rng: random.Random) -> list[list[int | None]]:
    """The generated region after each step when positions are committed in a random order,
    a few at a time (as a diffusion sampler does)."""
    order = list(range(len(tokens)))
    rng.shuffle(order)
    region: list[int | None] = [None] * len(tokens)
    states = []
    while order:
        take = rng.randint(1, 3)
        for position in order[:take]:
            region[position] = tokens[position]
        order = order[take:]
        states.append(list(region))
    return states


def run_stream(stream: TextStream, states: list[list[int | None]], final: list[int]) -> tuple[str, list[str]]:
    deltas = [stream.update(state) for state in states]
    deltas.append(stream.finish(final, "length"))
    return "".join(deltas), deltas


def expected_text(tokens: list[int], stops: list[str], decode=decode_bytes) -> tuple[str, str]:
    prefix, hit_eos = committed_prefix(tokens, frozenset({EOS}))
    text = decode(prefix)
    cut = find_stop(text, stops)
    if cut >= 0:
        return text[:cut], "stop"
    return text, "stop" if hit_eos else "length"


# --- the pure helpers -------------------------------------------------------------------------


def test_committed_prefix_stops_at_the_first_hole_or_end_of_sequence():
    assert committed_prefix([1, 2, None, 4], frozenset({9})) == ([1, 2], False)
    assert committed_prefix([1, 9, 3], frozenset({9})) == ([1], True)
    assert committed_prefix([None, 9], frozenset({9})) == ([], False)
    assert committed_prefix([], frozenset()) == ([], False)


def test_find_stop_is_the_earliest_of_any_stop():
    assert find_stop("hello world", ["world", "lo"]) == 3
    assert find_stop("hello", ["x"]) == -1
    assert find_stop("hello", []) == -1


def test_held_back_covers_unfinished_characters_and_stop_prefixes():
    assert held_back("abc", []) == 0
    assert held_back("ab\ufffd\ufffd", []) == 2
    assert held_back("say EN", ["END"]) == 2
    assert held_back("say E", ["END", "Eh"]) == 1
    assert held_back("say END", ["END"]) == 0  # a whole stop is found, not held
    assert held_back("x\ufffd", ["\ufffdy"]) == 1


# --- the stream -------------------------------------------------------------------------------


def test_text_waits_for_the_hole_before_it():
    stream = TextStream(decode_bytes, [EOS])
    assert stream.update([None, ord("b")]) == ""
    assert stream.update([ord("a"), ord("b")]) == "ab"
    assert stream.finish([ord("a"), ord("b")], "length") == ""
    assert (stream.text, stream.finish_reason) == ("ab", "length")


def test_a_split_utf8_character_is_sent_whole():
    euro = list("€".encode())  # 3 bytes
    stream = TextStream(decode_bytes, [EOS])
    assert stream.update([ord("a"), euro[0], euro[1], None]) == "a"
    assert stream.update([ord("a"), *euro]) == "€"


def test_end_of_sequence_ends_the_text_and_the_stream():
    stream = TextStream(decode_bytes, [EOS])
    assert stream.update([ord("o"), ord("k"), EOS, None]) == "ok"
    assert stream.done and stream.finish_reason == "stop"
    assert stream.update([ord("o"), ord("k"), EOS, ord("x")]) == ""
    assert stream.tokens == [ord("o"), ord("k")]


def test_a_stop_sequence_is_never_sent_even_in_part():
    stream = TextStream(decode_bytes, [EOS], stops=["END"])
    sent = [stream.update(list(b"go E") + [None]), stream.update(list(b"go EN") + [None])]
    assert sent == ["go ", ""]
    assert stream.update(list(b"go END more")) == ""
    assert (stream.text, stream.finish_reason) == ("go ", "stop")


def test_a_false_start_of_a_stop_sequence_is_released():
    stream = TextStream(decode_bytes, [EOS], stops=["END"])
    assert stream.update(list(b"an E") + [None]) == "an "
    assert stream.update(list(b"an Eel")) == "Eel"


@settings(max_examples=300, deadline=None)
@given(
    tokens=st.lists(
        st.one_of(st.integers(0, 255), st.sampled_from(list(b"ab \xe2\x82\xac") + [EOS])), max_size=40
    ),
    stops=st.lists(st.text(alphabet="ab €", min_size=1, max_size=3), max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_deltas_add_up_to_the_final_text(tokens, stops, seed):
    stream = TextStream(decode_bytes, [EOS], stops)
    states = snapshots(tokens, random.Random(seed))
    text, deltas = run_stream(stream, states, tokens)
    expected, reason = expected_text(tokens, stops)
    assert text == expected
    assert stream.finish_reason == reason
    for i in range(len(deltas)):  # nothing sent is ever past a stop sequence
        assert find_stop("".join(deltas[: i + 1]), stops) == -1


def test_with_a_real_bpe_tokenizer():
    tokenizer = make_tokenizer(TINY.vocab_size)
    text = "Héllo, wörld — the quick brown fox jumps; 3.14159 ≠ π."
    ids = tokenizer.encode(text).ids

    def decode(tokens):
        return tokenizer.decode(tokens, skip_special_tokens=True)

    for seed in range(20):
        stream = TextStream(decode, [EOS])
        streamed, _ = run_stream(stream, snapshots(ids, random.Random(seed)), ids)
        assert streamed == decode(ids) == text
