"""The verified sampler's golden test: on tiny LLaMA / Qwen2 / Qwen3 models exported with a
random conversion adapter (on every projection, the head and the embedding), the runtime's
verified sampler on onnxruntime — the diffusion model drafting, the same graph's gate-0 rows
checking — produces exactly the greedy tokens of the AR model as the torch reference computes it
(the base weights, causal, one token per forward). So does the runtime's AR sampler. The adapter
changes the model's own greedy tokens, so the equality is the switch at work, not a no-op. The
AR graph shipped beside the model (no adapter branches, the same weights file) decodes the same
tokens.

The slow test does the same on the default model (SmolLM2-135M-Instruct with the shipped adapter).
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from runtime.artifact import AR_GRAPH_NAME, GRAPH_NAME, load_config  # noqa: E402
from runtime.drafting import Drafting  # noqa: E402
from runtime.generate import generate  # noqa: E402
from runtime.ort_backend import OrtBackend, OrtOptions  # noqa: E402
from runtime.settings import GenerationSettings  # noqa: E402
from ruvdllm_export.checkpoints import load_checkpoint  # noqa: E402
from ruvdllm_export.export import export_model, load_static_adapter, merge_lora  # noqa: E402
from ruvdllm_export.onnx_graph import graph_weights_as_float, options_for_target, prepare_weights  # noqa: E402
from ruvdllm_export.reference import DiffusionLM  # noqa: E402
from ruvdllm_export.reference.autoregressive import greedy  # noqa: E402
from tests.fixtures.tiny_models import make_hf_checkpoint, write_conversion_adapter  # noqa: E402

torch.set_num_threads(1)
PROMPT = [1, 17, 42, 99, 150, 7, 230]
LENGTH = 24
OVERRIDES = dict(accuracy_level=0, top_k=16, adapter_slots=5, adapter_rank=2)


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def model(request, tmp_path_factory):
    """(config, graph, base reference, adapted reference) for one tiny architecture."""
    directory = tmp_path_factory.mktemp(f"verified-{request.param}")
    checkpoint_dir = make_hf_checkpoint(directory / "hf", request.param, seed=13)
    loaded = load_checkpoint(checkpoint_dir)
    adapter = write_conversion_adapter(directory / "adapter.safetensors", loaded)
    out = export_model(
        loaded, directory / "model", "cpu", adapter=adapter, block_size=4, log=None, **OVERRIDES
    )
    config = load_config(out)
    assert config.adapter_gate and "base_rows" in config.source["validation"]["parity"]
    held = prepare_weights(loaded.spec, loaded.weights, options_for_target("cpu", **OVERRIDES))
    base = DiffusionLM(loaded.spec, held, config.mask_token_id, config.top_k)
    spec, merged = merge_lora(loaded.spec, graph_weights_as_float(held), load_static_adapter(adapter, loaded))
    adapted = DiffusionLM(spec, merged, config.mask_token_id, config.top_k)
    return config, out / GRAPH_NAME, base, adapted


def runtime_tokens(model, seed: int = 3, **settings):
    config, graph, _, _ = model
    backend = OrtBackend(graph, config, OrtOptions(device="cpu", intra_op_threads=1))
    result = generate(backend, PROMPT, GenerationSettings(length=LENGTH, **settings), random.Random(seed))
    return result


def test_the_adapter_changes_the_greedy_tokens(model):
    config, _, base, adapted = model
    assert greedy(base, PROMPT, LENGTH) != greedy(adapted, PROMPT, LENGTH)


@pytest.mark.parametrize("block", [2, 4, 8])
def test_greedy_verified_equals_the_torch_ar_model(model, block):
    config, _, base, _ = model
    want = greedy(base, PROMPT, LENGTH)
    result = runtime_tokens(model, sampler="verified", block_size=block, stop_at_eos=False)
    assert result.tokens == want
    assert sum(e.drafted for e in result.trace) > 0


@pytest.mark.parametrize("mode", ["fallback", "first"])
def test_greedy_verified_with_copied_drafts_equals_the_torch_ar_model(model, mode):
    """A prompt that says the same thing twice, so prompt lookup proposes from the first forward
    on (and the tiny random models' greedy text repeats itself, which it copies as well)."""
    config, graph, base, _ = model
    prompt = PROMPT + PROMPT
    want = greedy(base, prompt, LENGTH)
    backend = OrtBackend(graph, config, OrtOptions(device="cpu", intra_op_threads=1))
    drafting = Drafting(lookup=mode, lookup_shortest=1)
    settings = GenerationSettings(
        sampler="verified", length=LENGTH, block_size=4, stop_at_eos=False, drafting=drafting
    )
    result = generate(backend, prompt, settings, random.Random(3))
    assert result.tokens == want
    assert result.looked_up[1] > 0


def test_greedy_ar_sampler_equals_the_torch_ar_model_and_stops_at_eos(model):
    config, _, base, _ = model
    assert runtime_tokens(model, sampler="ar", stop_at_eos=False).tokens == greedy(base, PROMPT, LENGTH)
    want = greedy(base, PROMPT, LENGTH, config.eos_token_ids)
    assert runtime_tokens(model, sampler="verified").tokens == want


def test_the_ar_graph_reads_the_same_weights_file_and_decodes_the_torch_ar_model(model):
    config, graph, base, _ = model
    ar_graph = graph.parent / AR_GRAPH_NAME
    assert config.ar_graph and config.source["validation"]["ar_graph"]["top1_agreement"] == 1.0
    proto = onnx.load(str(ar_graph), load_external_data=False)
    places = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert places == {GRAPH_NAME + ".data"} and sorted(p.name for p in graph.parent.glob("*.data")) == [
        GRAPH_NAME + ".data"
    ]
    assert {i.name for i in proto.graph.input}.isdisjoint({"adapter_gate", "adapter_weights"})
    backend = OrtBackend(ar_graph, config, OrtOptions(device="cpu", intra_op_threads=1), ar_only=True)
    settings = GenerationSettings(length=LENGTH, sampler="ar", stop_at_eos=False)
    assert generate(backend, PROMPT, settings, random.Random(3)).tokens == greedy(base, PROMPT, LENGTH)
    sampled = GenerationSettings(length=LENGTH, sampler="ar", temperature=0.8, top_p=0.9, stop_at_eos=False)
    assert (
        generate(backend, PROMPT, sampled, random.Random(5)).tokens
        == runtime_tokens(model, sampler="ar", temperature=0.8, top_p=0.9, stop_at_eos=False, seed=5).tokens
    )


def test_sampling_runs_seeded(model):
    a = runtime_tokens(model, sampler="verified", temperature=0.8, top_p=0.9, stop_at_eos=False)
    b = runtime_tokens(model, sampler="verified", temperature=0.8, top_p=0.9, stop_at_eos=False)
    assert a.tokens == b.tokens and len(a.tokens) == LENGTH


@pytest.mark.slow
def test_default_model_verified_equals_its_ar_model(tmp_path):
    """SmolLM2-135M-Instruct + the shipped adapter, exported with float activations (level 0, the
    graph computes the checkpoint's numbers): the verified sampler's greedy tokens are the torch
    reference's AR greedy tokens of the GGUF checkpoint, on a chat prompt and on one whose answer
    copies it (prompt lookup's drafts kept). (At the cpu default,
    int8 activations as llama.cpp's, greedy text leaves the float model's after some tokens, as
    llama.cpp's does: benchmarks/README.md, "Accuracy level 0 vs 4".)"""
    from runtime.chat_template import chat_prompt
    from runtime.cpython_model import open_model
    from ruvdllm_export.adapters import DEFAULT_ADAPTER
    from ruvdllm_export.default_model import default_gguf_path
    from ruvdllm_export.export import export_model

    gguf = default_gguf_path(progress=False)
    directory = export_model(gguf, tmp_path / "level0", adapter=DEFAULT_ADAPTER, accuracy_level=0, log=None)
    model = open_model(directory, options=OrtOptions(device="cpu"))
    ids = model.encode(chat_prompt(model, [{"role": "user", "content": "Why is the sky blue?"}]))
    settings = GenerationSettings(sampler="verified", length=48)
    done = model.generate(ids, settings)
    loaded = load_checkpoint(gguf)
    reference = DiffusionLM.from_checkpoint(loaded, model.config.top_k).cache_dequantized()
    assert done.tokens == greedy(reference, ids, 48, model.config.eos_token_ids)
    assert sum(e.drafted for e in done.trace) > 0
    # at level 0 the verified sampler also writes what the graph's own AR model writes (at level 4
    # int8 activations round differently for one row than for several: docs/sampling.md §11)
    assert done.tokens == model.generate(ids, GenerationSettings(sampler="ar", length=48)).tokens
    # an answer that copies its prompt: prompt lookup (on by default) drafts and is kept
    ask = "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the river bank."
    ids = model.encode(chat_prompt(model, [{"role": "user", "content": ask}]))
    done = model.generate(ids, settings)
    assert done.tokens == greedy(reference, ids, 48, model.config.eos_token_ids)
    assert done.result.looked_up[0] > 0
