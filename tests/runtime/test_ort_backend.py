import random
from dataclasses import replace

import numpy as np
import pytest

from runtime import artifact
from runtime.backend import Chunk
from runtime.banks import Bank
from runtime.generate import default_control, generate
from runtime.ort_backend import OrtBackend, OrtOptions, assemble_numpy, usable_cores, version_tuple
from runtime.settings import GenerationSettings
from ruvdllm.errors import RuvdllmError
from tests.runtime.tiny_artifact import random_bank

ONE_THREAD = OrtOptions(intra_op_threads=1)


class NoCacheBackend(OrtBackend):
    """Never caches: every chunk carries all committed tokens (the recomputed reference)."""

    def commit(self, keep: int) -> None:
        pass


@pytest.fixture(scope="module")
def config(tiny_model_dir):
    return artifact.load_config(tiny_model_dir)


@pytest.fixture
def backend(tiny_model_dir, config):
    return OrtBackend(tiny_model_dir / artifact.GRAPH_NAME, config, ONE_THREAD)


def chunk(ids, start=0, block_ids=None, offset=0, slots=5, weights=None):
    s = len(ids)
    return Chunk(
        input_ids=list(ids),
        position_ids=list(range(start, start + s)),
        block_ids=list(range(s)) if block_ids is None else block_ids,
        output_offset=offset,
        adapter_weights=weights or [[0.0] * slots for _ in range(s)],
    )


def test_commit_then_continue_equals_one_forward(backend):
    ids = [5, 17, 42, 99, 7, 8, 250, 3]
    full = backend.forward(chunk(ids))
    backend.reset()
    backend.forward(chunk(ids[:6]))
    backend.commit(5)  # keep 5 of 6: the chunk below restarts at position 5
    assert backend.cached() == 5
    rest = backend.forward(chunk(ids[5:], start=5))
    np.testing.assert_allclose(rest.topk_logits, np.asarray(full.topk_logits)[5:], rtol=1e-4, atol=1e-4)
    assert rest.topk_ids[-1][:3] == full.topk_ids[-1][:3]
    np.testing.assert_allclose(rest.query(2), full.query(7), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", ["bd3lm", "mdlm"])
def test_greedy_is_deterministic(backend, sampler):
    settings = GenerationSettings(sampler=sampler, length=12, stop_at_eos=False)
    a = generate(backend, [5, 6, 7], settings, random.Random(0)).tokens
    b = generate(backend, [5, 6, 7], settings, random.Random(99)).tokens  # rng unused at temperature 0
    assert a == b and len(a) == 12


def test_same_seed_same_tokens(backend):
    settings = GenerationSettings(length=16, temperature=1.5, stop_at_eos=False)
    a = generate(backend, [5, 6, 7], settings, random.Random(3)).tokens
    b = generate(backend, [5, 6, 7], settings, random.Random(3)).tokens
    c = generate(backend, [5, 6, 7], settings, random.Random(4)).tokens
    assert a == b and a != c


@pytest.mark.parametrize("decoding", ["low-confidence", "threshold"])
def test_bd3lm_cache_equals_recomputing(tiny_model_dir, config, backend, decoding):
    bank = random_bank(config, seed=1)
    settings = GenerationSettings(
        length=10, block_size=4, decoding=decoding, threshold=0.05, stop_at_eos=False
    )
    runs = []
    for cls in (OrtBackend, NoCacheBackend):
        b = cls(tiny_model_dir / artifact.GRAPH_NAME, config, ONE_THREAD, bank)
        control = default_control(b, bank.talora_config())
        runs.append(generate(b, [5, 6, 7, 8, 9], settings, random.Random(0), control))
    assert runs[0].tokens == runs[1].tokens
    assert [e.committed for e in runs[0].trace] == [e.committed for e in runs[1].trace]


def test_zero_bank_is_the_base_model_and_adapters_change_outputs(tiny_model_dir, config):
    graph = tiny_model_dir / artifact.GRAPH_NAME
    base = OrtBackend(graph, config, ONE_THREAD)
    zero = OrtBackend(graph, config, ONE_THREAD, Bank.for_model(config))
    adapted = OrtBackend(graph, config, ONE_THREAD, random_bank(config, seed=2, scale=2.0))
    ids = [5, 17, 42, 99, 7]
    weights = [[0.0, 0.0, 1.0, 0.5, 0.5]] * len(ids)
    out_base = base.forward(chunk(ids, weights=weights))
    out_zero = zero.forward(chunk(ids, weights=weights))
    out_adapted = adapted.forward(chunk(ids, weights=weights))
    out_off = adapted.forward(chunk(ids))  # all-zero weights: the base model again
    assert out_zero.topk_logits == out_base.topk_logits
    np.testing.assert_allclose(out_off.topk_logits, out_base.topk_logits, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out_adapted.topk_logits, out_base.topk_logits, atol=1e-2)

    settings = GenerationSettings(length=12, stop_at_eos=False)
    plain = generate(base, [5, 6, 7], settings, random.Random(0)).tokens
    bank = adapted_bank = random_bank(config, seed=2, scale=2.0)
    tuned = generate(
        adapted, [5, 6, 7], settings, random.Random(0), default_control(adapted, bank.talora_config())
    ).tokens
    assert plain != tuned
    assert adapted_bank.adapters


def test_assemble_numpy_matches_the_standard_library(config):
    bank = random_bank(config, seed=3)
    for target, (fan_in, fan_out) in bank.targets.items():
        a, b = assemble_numpy(bank, target, fan_in, fan_out)
        pa, pb = bank.assemble(target)
        np.testing.assert_array_equal(a.ravel(), np.frombuffer(pa, np.float32))
        np.testing.assert_array_equal(b.ravel(), np.frombuffer(pb, np.float32))


def test_bank_dimension_mismatch_and_bad_options(tiny_model_dir, config):
    from dataclasses import replace

    other = Bank.for_model(replace(config, adapter_rank=config.adapter_rank + 1))
    with pytest.raises(RuvdllmError, match="rank 3 does not match the model's 2"):
        OrtBackend(tiny_model_dir / artifact.GRAPH_NAME, config, ONE_THREAD, other)
    with pytest.raises(RuvdllmError, match="optimization"):
        OrtBackend(tiny_model_dir / artifact.GRAPH_NAME, config, OrtOptions(optimization="max"))
    with pytest.raises(RuvdllmError, match="device"):
        OrtBackend(tiny_model_dir / artifact.GRAPH_NAME, config, OrtOptions(device="tpu"))
    with pytest.raises(RuvdllmError, match="layers"):
        OrtBackend(tiny_model_dir / artifact.GRAPH_NAME, replace(config, num_layers=3), ONE_THREAD)


@pytest.mark.parametrize("threads", [-1, "more than the cores"])
def test_threads_beyond_the_usable_cores_are_refused_before_onnxruntime_starts_them(
    tiny_model_dir, config, threads
):
    threads = usable_cores() + 1 if isinstance(threads, str) else threads
    with pytest.raises(RuvdllmError, match=f"threads {threads}: choose 0 .* 1..{usable_cores()}"):
        OrtBackend(tiny_model_dir / artifact.GRAPH_NAME, config, OrtOptions(intra_op_threads=threads))


def test_empty_bank_binds_zero_width_factors_with_the_same_outputs(tiny_model_dir, config):
    """No adapter loaded: the factors go in zero-width (the bank branches read nothing); a bank
    holding one all-zero adapter binds them at full width. Same model either way."""
    graph = tiny_model_dir / artifact.GRAPH_NAME
    empty = OrtBackend(graph, config, ONE_THREAD)
    zeros = random_bank(config, seed=4, scale=0.0)
    assert zeros.adapters
    full = OrtBackend(graph, config, ONE_THREAD, zeros)
    widths = {v.shape()[2] for v in empty._bank_values[::2]}, {v.shape()[2] for v in full._bank_values[::2]}
    assert widths == ({0}, {config.adapter_slots * config.adapter_rank})
    ids = [5, 17, 42, 99, 7]
    weights = [[0.5] * config.adapter_slots] * len(ids)
    a = empty.forward(chunk(ids, weights=weights, slots=config.adapter_slots))
    b = full.forward(chunk(ids, weights=weights, slots=config.adapter_slots))
    np.testing.assert_allclose(a.topk_logits, b.topk_logits, rtol=0, atol=1e-6)


def test_a_graph_needing_a_newer_onnxruntime_is_refused_in_one_line(tiny_model_dir, config):
    from dataclasses import replace

    future = replace(config, requires_onnxruntime="99.0")
    with pytest.raises(RuvdllmError, match=r"target cpu .* needs onnxruntime >= 99\.0; this is \d") as info:
        OrtBackend(tiny_model_dir / artifact.GRAPH_NAME, future, ONE_THREAD)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "parsed"), [("1.32.0", (1, 32, 0)), ("1.31", (1, 31)), ("1.33.0.dev20260101", (1, 33, 0))]
)
def test_version_tuple(text, parsed):
    assert version_tuple(text) == parsed


def test_the_gate_switches_the_conversion_adapter_per_row(tiny_switch_model_dir):
    """Gate 0 rows differ from gate 1 rows (the adapter is baked in), no gate means on everywhere,
    and the verified sampler over this backend equals the AR sampler."""
    config = artifact.load_config(tiny_switch_model_dir)
    backend = OrtBackend(tiny_switch_model_dir / artifact.GRAPH_NAME, config, ONE_THREAD)
    assert backend.has_gate
    ids = [5, 17, 42, 99, 7]

    def run(gate):
        backend.reset()
        return backend.forward(replace(chunk(ids), adapter_gate=gate)).topk_logits

    on, off, default = run([1.0] * 5), run([0.0] * 5), run(None)
    assert on == default and not np.allclose(on, off, atol=1e-3)
    settings = dict(length=16, block_size=4, stop_at_eos=False)
    verified = generate(backend, ids, GenerationSettings(sampler="verified", **settings), random.Random(0))
    ar = generate(backend, ids, GenerationSettings(sampler="ar", **settings), random.Random(0))
    assert verified.tokens == ar.tokens and sum(e.drafted for e in verified.trace) > 0


def test_a_gate_for_an_adapter_without_a_switch_is_refused(tiny_model_dir, config, backend):
    backend.forward(replace(chunk([5, 6]), adapter_gate=[0.0, 0.0]))  # no adapter baked in: nothing to switch
    switchless = replace(config, source={"static_adapter": {"linears": 1}})  # baked in, no gate input
    plain = OrtBackend(tiny_model_dir / artifact.GRAPH_NAME, switchless, ONE_THREAD)
    with pytest.raises(RuvdllmError, match="no switch"):
        plain.forward(replace(chunk([5, 6]), adapter_gate=[0.0, 1.0]))


@pytest.mark.parametrize(("load", "idle"), [(0.0, True), (1e6, False), (None, True)])
def test_spinning_is_left_on_only_when_the_machine_is_idle(monkeypatch, load, idle):
    import os

    from runtime import ort_backend

    def getloadavg():
        if load is None:
            raise OSError("no load average here")
        return (load, load, load)

    monkeypatch.setattr(os, "getloadavg", getloadavg)
    assert ort_backend.machine_is_idle() is idle
