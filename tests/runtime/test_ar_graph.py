"""The AR graph (config `ar_graph`, artifact.AR_GRAPH_NAME): a model whose conversion adapter has
the per-row switch ships the base model's own graph beside its full one. A process that will only
run the `ar` sampler opens it (runtime/cpython_model.py `runs_ar_only`), decodes the same tokens
as the full graph's gate-0 rows, and refuses anything but AR rows."""

from __future__ import annotations

import argparse
import random
import shutil
from dataclasses import replace

import pytest

from runtime import artifact
from runtime.answer_store import AnswerStore
from runtime.autoregressive import ar_rows
from runtime.cpython_model import load_tokenizer, open_model, runs_ar_only
from runtime.model import DiffusionModel
from runtime.ort_backend import OrtBackend, OrtOptions
from runtime.row_cost import RowCost, kept
from runtime.settings import GenerationSettings
from runtime.verify import cache_root
from ruvdllm.errors import RuvdllmError
from tests.runtime.tiny_artifact import make_tiny_artifact, random_bank

ONE_THREAD = OrtOptions(device="cpu", intra_op_threads=1)
PROMPT = [5, 17, 42, 99, 7]


def record_row_cost(directory, extra_row: float) -> None:
    """A row-cost record for the model's full graph, as a measurement on this machine leaves it
    (the only one: a record is kept until its key changes)."""
    (cache_root() / "row_cost.json").unlink(missing_ok=True)
    backend = OrtBackend(directory / artifact.GRAPH_NAME, artifact.load_config(directory), ONE_THREAD)
    one_row = 10.0
    kept(
        cache_root() / "row_cost.json",
        backend.row_cost_key(),
        lambda: RowCost(one_row, 5, one_row * (1 + 4 * extra_row)),
    )


def test_the_ar_graph_is_opened_only_where_the_ar_sampler_alone_will_run(
    tiny_switch_model_dir, tiny_model_dir
):
    config = artifact.load_config(tiny_switch_model_dir)
    assert config.ar_graph and (tiny_switch_model_dir / artifact.AR_GRAPH_NAME).is_file()

    def runs(settings, acceptance=None, directory=tiny_switch_model_dir):
        return runs_ar_only(directory, artifact.load_config(directory), settings, acceptance, ONE_THREAD)

    auto = GenerationSettings()
    assert runs(replace(auto, sampler="ar"))
    assert not runs(None) and not runs(auto)  # no settings; auto without a record: the full graph measures
    record_row_cost(tiny_switch_model_dir, 0.35)
    assert runs(auto)  # the record says drafts do not pay: auto is `ar`
    assert not runs(auto, acceptance="exact")  # a named acceptance rule verifies
    assert not runs(replace(auto, steps=2))  # diffusion-only settings: the diffusion sampler
    assert not runs(replace(auto, sampler="verified"))
    without_adapter = runs(replace(auto, sampler="ar"), directory=tiny_model_dir)
    assert not without_adapter  # no conversion adapter, no AR graph: the one graph is the AR model
    record_row_cost(tiny_switch_model_dir, 0.05)
    assert not runs(auto)  # cheap rows: verified


def test_the_ar_graph_decodes_the_full_graphs_ar_tokens(tiny_switch_model_dir):
    full = open_model(tiny_switch_model_dir, options=ONE_THREAD)
    ar_settings = GenerationSettings(sampler="ar", length=12, stop_at_eos=False)
    lean = open_model(tiny_switch_model_dir, options=ONE_THREAD, settings=ar_settings)
    assert lean.backend.ar_only and lean.backend.graph.name == artifact.AR_GRAPH_NAME
    assert not full.backend.ar_only and full.backend.graph.name == artifact.GRAPH_NAME
    assert len(lean.backend.input_names) < len(full.backend.input_names)  # no gate, no bank inputs
    for settings in (ar_settings, replace(ar_settings, temperature=0.9, top_p=0.9)):
        want = full.generate(PROMPT, settings, seed=4)
        got = lean.generate(PROMPT, settings, seed=4)
        assert got.tokens == want.tokens and len(got.tokens) == 12
    # sampler auto on the AR graph is `ar`, whatever became of the record since it was opened
    assert lean.concrete(GenerationSettings()).sampler == "ar"


def test_a_request_for_another_sampler_switches_the_model_to_its_full_graph(tiny_switch_model_dir):
    settings = GenerationSettings(sampler="ar", length=4, stop_at_eos=False)
    model = open_model(tiny_switch_model_dir, options=ONE_THREAD, settings=settings)
    model.use_bank(random_bank(model.config), tiny_switch_model_dir)  # ignored by the AR graph, kept
    assert model.backend.ar_only
    rows = ar_rows(PROMPT, 0, model.config.adapter_slots)
    slots = model.config.adapter_slots
    for bad in (
        replace(rows, adapter_gate=[0.0] * 4 + [1.0]),
        replace(rows, adapter_gate=None),
        replace(rows, adapter_weights=[[0.0] * slots] * 4 + [[1.0] * slots]),
    ):
        with pytest.raises(RuvdllmError, match="runs the AR model only"):
            model.backend.forward(bad)
    model.backend.forward(rows)  # the AR rows themselves run
    # sampler auto stays `ar` (its row-cost record went missing since, or never was)
    assert model.concrete(GenerationSettings()).sampler == "ar" and model.backend.ar_only
    # a sampler the AR graph cannot run: the full graph from now on, with the model's bank bound
    verified = replace(settings, sampler="verified")
    done = model.generate(PROMPT, verified)
    assert not model.backend.ar_only and model.backend.graph.name == artifact.GRAPH_NAME
    full = open_model(tiny_switch_model_dir, options=ONE_THREAD)
    full.use_bank(random_bank(model.config), tiny_switch_model_dir)
    assert done.tokens == full.generate(PROMPT, verified).tokens
    assert model.generate(PROMPT, replace(settings, sampler="bd3lm"), seed=1).tokens == (
        full.generate(PROMPT, replace(settings, sampler="bd3lm"), seed=1).tokens
    )


def test_a_model_on_the_ar_graph_reads_its_answer_store_only_when_it_leaves_it(
    tiny_switch_model_dir, tmp_path
):
    directory = tmp_path / "model"
    shutil.copytree(tiny_switch_model_dir, directory)
    config = artifact.load_config(directory)
    store = AnswerStore.build([([5, 17], [42, 99, 7, 42, 99, 7])], config.vocab_size, min_count=1)
    store.write(directory / artifact.ANSWER_STORE_NAME)
    artifact.write_manifest(directory)
    ar = GenerationSettings(sampler="ar", length=4, stop_at_eos=False)
    model = open_model(directory, options=ONE_THREAD, settings=ar)
    assert model.backend.ar_only and model.answers is None  # the `ar` sampler never drafts
    model.generate(PROMPT, replace(ar, sampler="verified"))
    assert not model.backend.ar_only and model.answers.entries == store.entries
    assert open_model(directory, options=ONE_THREAD).answers.entries == store.entries  # full graph: at once

    (directory / artifact.ANSWER_STORE_NAME).write_bytes(b"RVAS" + bytes(12))  # damaged, manifest agrees
    artifact.write_manifest(directory)
    model = open_model(directory, options=ONE_THREAD, settings=ar)
    with pytest.raises(RuvdllmError, match=artifact.ANSWER_STORE_NAME):
        model.generate(PROMPT, replace(ar, sampler="verified"))
    assert model.backend.ar_only and model.generate(PROMPT, ar).tokens  # the AR graph still serves


def test_a_model_on_the_ar_graph_alone_names_what_it_cannot_run(tiny_switch_model_dir):
    config = artifact.load_config(tiny_switch_model_dir)
    backend = OrtBackend(tiny_switch_model_dir / artifact.AR_GRAPH_NAME, config, ONE_THREAD, ar_only=True)
    tokenizer = load_tokenizer(tiny_switch_model_dir / artifact.TOKENIZER_NAME, config)
    model = DiffusionModel(tiny_switch_model_dir, config, tokenizer, backend)  # no way to the full graph
    with pytest.raises(RuvdllmError, match="opened on its AR graph"):
        model.concrete(GenerationSettings(sampler="verified"))
    with pytest.raises(RuvdllmError, match="opened on its AR graph"):
        model.concrete(GenerationSettings(steps=2))  # diffusion-only settings: a diffusion sampler
    assert model.generate(PROMPT, GenerationSettings(sampler="ar", length=3), rng=random.Random(0)).tokens


def test_the_ar_graph_reads_its_full_graphs_row_cost_and_measures_nothing(tiny_switch_model_dir):
    config = artifact.load_config(tiny_switch_model_dir)
    lean = OrtBackend(tiny_switch_model_dir / artifact.AR_GRAPH_NAME, config, ONE_THREAD, ar_only=True)
    assert lean.row_cost() is None and not (cache_root() / "row_cost.json").exists()
    record_row_cost(tiny_switch_model_dir, 0.35)
    assert lean.row_cost().extra_row == pytest.approx(0.35)


def test_the_server_opens_its_models_on_the_ar_graph_where_its_defaults_run_ar(tiny_switch_model_dir):
    from runtime.server.command import open_engine

    args = argparse.Namespace(
        model=tiny_switch_model_dir,
        threads=1,
        max_concurrency=2,
        device="cpu",
        bank=None,
        verify="cached",
        model_name=None,
    )
    engine, _ = open_engine(args, default_model=None)
    assert not any(m.backend.ar_only for m in engine.models)  # no row cost recorded: the full graph
    record_row_cost(tiny_switch_model_dir, 0.35)
    engine, _ = open_engine(args, default_model=None)
    assert all(m.backend.ar_only for m in engine.models)
    first, second = engine.models
    first.concrete(GenerationSettings(sampler="verified"))  # the model that serves such a request switches
    assert not first.backend.ar_only and second.backend.ar_only


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_the_ar_graphs_key_value_buffer_grows_and_rolls_back_as_the_copied_cache_does(
    arch, tmp_path, monkeypatch
):
    """The cpu AR graph attends over a key/value buffer the backend owns (runtime/kv_buffer.py):
    grown here from 2 positions by doubling, the cached positions carried along, and a commit of
    fewer rows than a forward wrote is a rollback. Every step's outputs match the full graph's gate-0
    rows over its copied cache, which slices on the same commits."""
    monkeypatch.setattr("runtime.kv_buffer.INITIAL_POSITIONS", 2)
    directory = make_tiny_artifact(tmp_path / "model", arch, conversion_adapter=True)
    config = artifact.load_config(directory)
    lean = OrtBackend(directory / artifact.AR_GRAPH_NAME, config, ONE_THREAD, ar_only=True)
    full = OrtBackend(directory / artifact.GRAPH_NAME, config, ONE_THREAD)
    assert artifact.SEQLENS_K in lean.input_names and artifact.BLOCK_IDS not in lean.input_names
    sequence = []
    # (the chunk's tokens, positions kept after it): a prompt, steps, and 3 rows of which 1 is kept
    for chunk, keep in [(PROMPT, 5), ([3], 6), ([8, 9, 10], 7), ([11], 8), ([12, 13], 10), ([14], 11)]:
        sequence = sequence[: lean.cached()] + chunk
        outputs = [b.forward(ar_rows(sequence, b.cached(), b.config.adapter_slots)) for b in (lean, full)]
        assert outputs[0].topk_ids == outputs[1].topk_ids
        flat = [[x for row in o.topk_logits for x in row] for o in outputs]
        assert flat[0] == pytest.approx(flat[1], abs=1e-4)
        for b in (lean, full):
            b.commit(keep)
    assert lean._buffer.capacity == 16 and lean.cached() == full.cached() == 11
    with pytest.raises(ValueError, match="outside"):
        lean.commit(lean.cached() + 1)
    lean.reset()  # a new sequence in the same buffers
    again = lean.forward(ar_rows(PROMPT, 0, 0))
    full.reset()
    assert again.topk_ids == full.forward(ar_rows(PROMPT, 0, config.adapter_slots)).topk_ids
