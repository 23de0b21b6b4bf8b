import random

from runtime.generate import default_control, generate
from runtime.mdlm import mdlm_chunk
from runtime.settings import GenerationSettings
from tests.runtime.toy_backend import ToyBackend


def test_chunk_is_prompt_plus_span_bidirectional_from_the_last_prompt_token():
    rows = [[0.0]] * 5
    chunk = mdlm_chunk([5, 6, 7], [None, 3], mask_id=9, adapter_rows=rows)
    assert chunk.input_ids == [5, 6, 7, 9, 3]
    assert chunk.position_ids == [0, 1, 2, 3, 4]
    assert chunk.block_ids == [0, 0, 0, 0, 0]
    assert chunk.output_offset == 2


def test_runs_steps_forwards_over_the_whole_span_without_cache():
    backend = ToyBackend()
    settings = GenerationSettings(sampler="mdlm", length=12, steps=4, stop_at_eos=False)
    events = []
    result = generate(backend, [1, 2, 3], settings, random.Random(0), on_step=events.append)
    assert len(backend.chunks) == 4 == result.steps
    assert all(len(c) == 15 and c.output_offset == 2 for c in backend.chunks)
    assert backend.cached() == 0
    assert [len(e.committed) for e in events] == [3, 3, 3, 3]
    masked = [sum(t is None for t in e.tokens) for e in events]
    assert masked == [9, 6, 3, 0]
    assert [e.t for e in events] == [1.0, 0.75, 0.5, 0.25]
    assert events[-1].tokens == result.tokens  # no EOS stop: nothing is cut
    assert len(result.tokens) == 12 and None not in result.tokens


def test_mask_rows_change_with_what_is_committed():
    """Each forward sees the tokens committed so far (the span is updated between steps)."""
    backend = ToyBackend()
    generate(
        backend, [1, 2], GenerationSettings(sampler="mdlm", length=4, stop_at_eos=False), random.Random(0)
    )
    masks = [c.input_ids[2:].count(backend.config.mask_token_id) for c in backend.chunks]
    assert masks == [4, 3, 2, 1]


def test_same_seed_same_tokens_and_temperature_changes_them():
    settings = GenerationSettings(sampler="mdlm", length=16, steps=8, temperature=1.0, stop_at_eos=False)
    a = generate(ToyBackend(peaked=0.5), [4], settings, random.Random(7)).tokens
    b = generate(ToyBackend(peaked=0.5), [4], settings, random.Random(7)).tokens
    c = generate(ToyBackend(peaked=0.5), [4], settings, random.Random(8)).tokens
    greedy = generate(
        ToyBackend(peaked=0.5),
        [4],
        GenerationSettings(sampler="mdlm", length=16, steps=8, stop_at_eos=False),
        random.Random(7),
    ).tokens
    assert a == b
    assert a != c or a != greedy


def test_threshold_decoding_takes_fewer_steps_on_a_confident_model():
    confident = ToyBackend(peaked=8.0)
    settings = GenerationSettings(
        sampler="mdlm", length=16, decoding="threshold", threshold=0.5, stop_at_eos=False
    )
    result = generate(confident, [4], settings, random.Random(0))
    assert len(result.tokens) == 16
    assert result.steps < 16
    unsure = generate(ToyBackend(peaked=0.1), [4], settings, random.Random(0))
    assert unsure.steps == 16  # nothing reaches 0.5: one (the best) per step


def test_control_rows_follow_talora_per_step():
    from runtime.talora import TaloraConfig

    backend = ToyBackend()
    control = default_control(backend, talora=TaloraConfig(interpolation="discrete"))
    generate(
        backend,
        [1, 2],
        GenerationSettings(sampler="mdlm", length=3, stop_at_eos=False),
        random.Random(0),
        control,
    )
    first = backend.chunks[0].adapter_weights
    assert first[0] == [1.0, 0.0, 0.0, 0.0, 0.0]  # prompt rows: t = 0, fine group
    assert first[2] == [0.0, 0.0, 1.0, 0.0, 0.0]  # span at t = 1: coarse group
    assert backend.chunks[1].adapter_weights[2] == [0.0, 0.0, 1.0, 0.0, 0.0]  # t = 2/3
    assert backend.chunks[2].adapter_weights[2] == [0.0, 1.0, 0.0, 0.0, 0.0]  # t = 1/3
