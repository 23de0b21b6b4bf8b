import random
from dataclasses import replace

import pytest

from runtime.bd3lm import bd3lm_chunk
from runtime.dgr import DgrConfig
from runtime.generate import default_control, generate
from runtime.index import ExactIndex
from runtime.settings import GenerationSettings
from runtime.talora import TaloraConfig
from tests.runtime.toy_backend import TOY_CONFIG, ToyBackend

M = TOY_CONFIG.mask_token_id


def test_chunk_layout_first_step_and_later_steps():
    rows = [[0.0]] * 6
    first = bd3lm_chunk([5, 6, 7], 0, [None, None, None], M, rows)
    assert first.input_ids == [5, 6, 7, M, M, M]
    assert first.position_ids == [0, 1, 2, 3, 4, 5]
    assert first.block_ids == [0, 1, 2, 3, 3, 3]  # prompt causal, block one id after it
    assert first.output_offset == 2
    later = bd3lm_chunk([5, 6, 7], 2, [None, 8, None], M, rows[:4])
    assert later.input_ids == [7, M, 8, M]
    assert later.position_ids == [2, 3, 4, 5]
    assert later.block_ids == [0, 1, 1, 1]
    assert later.output_offset == 0


def test_a_one_position_block_is_autoregressive_decoding():
    """Block 1: the last committed token's row predicts the position, no mask row is fed, and the
    whole chunk is cached: one row per token after the prompt."""
    assert bd3lm_chunk([5, 6, 7], 0, [None], M, [[0.0]] * 4).input_ids == [5, 6, 7]
    backend = ToyBackend()
    settings = GenerationSettings(sampler="bd3lm", length=5, block_size=1, stop_at_eos=False)
    result = generate(backend, [1, 2, 3], settings, random.Random(0))
    assert [len(c) for c in backend.chunks] == [3, 1, 1, 1, 1]
    assert all(M not in c.input_ids and c.output_offset == len(c) - 1 for c in backend.chunks)
    assert [c.position_ids[0] for c in backend.chunks[1:]] == [3, 4, 5, 6]
    assert backend.cached() == 3 + 4  # the last token is never fed back
    assert len(result.tokens) == 5


def test_chunks_and_cache_across_blocks():
    backend = ToyBackend()
    settings = GenerationSettings(sampler="bd3lm", length=8, block_size=4, steps=2, stop_at_eos=False)
    generate(backend, [1, 2, 3], settings, random.Random(0))
    chunks = backend.chunks
    assert len(chunks) == 4
    assert chunks[0].input_ids[:3] == [1, 2, 3] and chunks[0].output_offset == 2 and len(chunks[0]) == 7
    assert chunks[1].position_ids[0] == 2 and chunks[1].input_ids[0] == 3 and len(chunks[1]) == 5
    # block 1, step 0: lead token + the 4 committed tokens of block 0 + 4 masks, from position 2
    assert chunks[2].position_ids == list(range(2, 11))
    assert chunks[2].block_ids == [0, 1, 2, 3, 4, 5, 5, 5, 5]
    assert chunks[2].output_offset == 4
    assert M not in chunks[2].input_ids[:5]
    assert chunks[3].position_ids[0] == 6 and len(chunks[3]) == 5
    assert backend.cached() == 6


@pytest.mark.parametrize("block_size", [4, 1])
@pytest.mark.parametrize("decoding", ["low-confidence", "threshold"])
@pytest.mark.parametrize("prompt", [[1], [1, 2, 3, 4, 5]])
def test_cached_equals_recomputed(decoding, prompt, block_size):
    """The truncated cache must be exactly what a forward over all committed tokens computes."""
    bank_index = ExactIndex(TOY_CONFIG.hidden_size)
    rng = random.Random(3)
    bank_index.add([[rng.gauss(0, 1) for _ in range(8)] for _ in range(10)], [3, 4] * 5)
    settings = GenerationSettings(
        sampler="bd3lm",
        length=11,
        block_size=block_size,
        decoding=decoding,
        threshold=0.3,
        temperature=0.8,
        stop_at_eos=False,
    )

    def run(use_cache):
        backend = ToyBackend(use_cache=use_cache)
        control = default_control(
            backend, TaloraConfig(), DgrConfig(strategy="entropy", threshold=0.0), bank_index
        )
        result = generate(backend, prompt, settings, random.Random(11), control)
        return result, backend

    cached, with_cache = run(True)
    recomputed, without = run(False)
    assert cached.tokens == recomputed.tokens
    assert [e.committed for e in cached.trace] == [e.committed for e in recomputed.trace]
    assert any(e.retrieved for e in cached.trace) or block_size == 1  # block 1: nothing left masked
    assert sum(len(c) for c in with_cache.chunks) < sum(len(c) for c in without.chunks)


def test_stops_after_the_block_with_eos_and_truncates():
    eos = TOY_CONFIG.eos_token_ids[0]
    for seed in range(60):  # find a seed whose sampling emits EOS early
        backend = ToyBackend(peaked=0.3)
        settings = GenerationSettings(sampler="bd3lm", length=40, block_size=4, temperature=1.0)
        result = generate(backend, [2], settings, random.Random(seed))
        if result.finish_reason == "stop":
            break
    assert result.finish_reason == "stop"
    assert eos not in result.tokens
    last = result.trace[-1].tokens
    assert eos in last[-4:]  # stopped after the block that produced it
    assert len(last) < 40


def test_last_block_may_be_short_and_events_stream_the_whole_text():
    events = []
    settings = GenerationSettings(sampler="bd3lm", length=6, block_size=4, stop_at_eos=False)
    result = generate(ToyBackend(), [1, 2], settings, random.Random(0), on_step=events.append)
    assert [e.span for e in events] == [0, 0, 0, 0, 1, 1]
    assert [len(e.tokens) for e in events] == [4, 4, 4, 4, 6, 6]
    assert events[3].tokens == result.tokens[:4]
    assert events[4].tokens[:4] == result.tokens[:4] and events[4].tokens[4:].count(None) == 1
    assert set(events[5].committed) == {4} or set(events[5].committed) == {5}


def test_without_eos_stop_nothing_is_cut():
    eos = TOY_CONFIG.eos_token_ids[0]
    for seed in range(60):
        settings = GenerationSettings(
            sampler="bd3lm", length=24, block_size=4, temperature=1.0, stop_at_eos=False
        )
        result = generate(ToyBackend(peaked=0.3), [2], settings, random.Random(seed))
        if eos in result.tokens:
            break
    assert eos in result.tokens and len(result.tokens) == 24 and result.finish_reason == "length"


def test_the_default_writes_each_block_left_to_right_one_token_per_step():
    """The default order (measured best on the default model): every step commits the leftmost
    masked position, so each token is chosen seeing every token before it."""
    settings = GenerationSettings(length=8, block_size=4, stop_at_eos=False)
    result = generate(ToyBackend(), [1, 2, 3], settings, random.Random(0))
    assert [list(event.committed) for event in result.trace] == [[i] for i in range(8)]
    by_confidence = replace(settings, order="confidence")
    trace = generate(ToyBackend(), [1, 2, 3], by_confidence, random.Random(0)).trace
    assert [list(e.committed) for e in trace] != [
        [i] for i in range(8)
    ]  # the toy is not left-to-right by chance
