"""The torch reference model against the exported ONNX graph on onnxruntime CPU, on the very
weights the graph holds (prepare_weights: 4-bit linears, 8- or 4-bit token table): block-causal
and bidirectional chunks, a KV cache, output offsets, the adapter bank and a static LoRA."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from runtime import artifact
from ruvdllm_export.onnx_graph import GraphOptions, StaticLora, build_graph, prepare_weights
from ruvdllm_export.reference import DiffusionLM, LoraConfig, apply_lora, lora_factors, lora_parameters
from ruvdllm_export.spec import EMBED, LM_HEAD, linear_weight
from tests.export.graph_harness import feeds, presents, run, session
from tests.export.reference_models import ARCHITECTURES, tiny_spec
from tests.fixtures.tiny_models import tiny_weights

torch.set_num_threads(1)
# accuracy_level 0: float activations in MatMulNBits, so the only differences are summation order
OPTIONS = GraphOptions(
    attention="mha",
    accuracy_level=0,
    top_k=8,
    adapter_targets=("q_proj", "v_proj", "down_proj"),
    adapter_slots=3,
    adapter_rank=2,
)
ATOL = 2e-4


@functools.cache
def pair(architecture: str, tied: bool, table_bits: int | None = None):
    spec = tiny_spec(architecture, tied)
    weights = tiny_weights(architecture, tied, seed=5)
    options = GraphOptions(**{**OPTIONS.__dict__, "table_bits": table_bits})
    graph = session(build_graph(spec, weights, options))
    reference = DiffusionLM(
        spec, prepare_weights(spec, weights, options), mask_token_id=3, top_k=options.top_k
    )
    return spec, options, graph, reference


def _bank(spec, options, seed):
    rng = np.random.default_rng(seed)
    width = options.adapter_slots * options.adapter_rank
    bank = {}
    for target in options.adapter_targets:
        in_, out_ = spec.linear_features()[target]
        bank[target] = (
            (rng.standard_normal((spec.num_layers, in_, width)) / np.sqrt(in_)).astype(np.float32),
            (rng.standard_normal((spec.num_layers, width, out_)) * 0.5).astype(np.float32),
        )
    return bank


def _compare(graph_out: dict, ref_out: dict, num_layers: int) -> None:
    for name in (artifact.TOPK_LOGITS, artifact.LOGSUMEXP, artifact.ENTROPY, artifact.QUERY):
        np.testing.assert_allclose(graph_out[name], ref_out[name].numpy(), atol=ATOL, rtol=0, err_msg=name)
    np.testing.assert_array_equal(
        graph_out[artifact.TOPK_IDS][..., 0], ref_out[artifact.TOPK_IDS][..., 0].numpy()
    )
    for layer in range(num_layers):
        for name in (artifact.present_key(layer), artifact.present_value(layer)):
            np.testing.assert_allclose(
                graph_out[name], ref_out[name].numpy(), atol=ATOL, rtol=0, err_msg=name
            )


def _reference(model, ids, blocks, offset=0, past=None, adapter_weights=None, bank=None):
    p = 0 if not past else past[0][0].shape[2]
    with torch.no_grad():
        return model(
            torch.from_numpy(ids)[None],
            torch.arange(p, p + len(ids))[None],
            torch.from_numpy(np.asarray(blocks))[None],
            output_offset=offset,
            past=None if past is None else [(torch.from_numpy(k), torch.from_numpy(v)) for k, v in past],
            adapter_weights=None if adapter_weights is None else torch.from_numpy(adapter_weights),
            adapter_bank=None
            if bank is None
            else {t: (torch.from_numpy(a), torch.from_numpy(b)) for t, (a, b) in bank.items()},
        )


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_graph_equals_reference_with_cache_and_adapters(architecture, tied):
    spec, options, graph, reference = pair(architecture, tied)
    assert reference.quantized
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, spec.vocab_size, 6)
    block = rng.integers(0, spec.vocab_size, 4)
    adapter_weights = rng.uniform(-1, 1, (1, 10, options.adapter_slots)).astype(np.float32)
    bank = _bank(spec, options, seed=1)

    # step 1: prompt (causal) + a bidirectional block, adapters on, no cache
    ids = np.concatenate([prompt, block])
    blocks = np.array([0, 1, 2, 3, 4, 5, 6, 6, 6, 6])
    g1 = run(
        graph, feeds(spec, options, ids, blocks, output_offset=5, adapter_weights=adapter_weights, banks=bank)
    )
    r1 = _reference(reference, ids, blocks, 5, adapter_weights=adapter_weights, bank=bank)
    _compare(g1, r1, spec.num_layers)

    # step 2: after caching the first 5 positions, [lead] + block
    past = [(k[:, :, :5], v[:, :, :5]) for k, v in presents(spec, g1)]
    ids2, blocks2 = np.concatenate([prompt[5:], block]), np.array([0, 1, 1, 1, 1])
    g2 = run(
        graph,
        feeds(
            spec,
            options,
            ids2,
            blocks2,
            output_offset=0,
            past=past,
            adapter_weights=adapter_weights[:, 5:],
            banks=bank,
        ),
    )
    r2 = _reference(reference, ids2, blocks2, 0, past=past, adapter_weights=adapter_weights[:, 5:], bank=bank)
    _compare(g2, r2, spec.num_layers)


def test_graph_equals_reference_with_a_4bit_table():
    spec, options, graph, reference = pair("llama", True, table_bits=4)
    ids = np.random.default_rng(1).integers(0, spec.vocab_size, 9)
    blocks = np.zeros(9, np.int64)
    _compare(
        run(graph, feeds(spec, options, ids, blocks, output_offset=2)),
        _reference(reference, ids, blocks, 2),
        spec.num_layers,
    )


def test_static_lora_in_the_graph_equals_the_trained_adapter():
    """The conversion adapter trained in torch, baked into the graph as a static delta."""
    spec = tiny_spec("qwen2", False)
    weights = tiny_weights("qwen2", False, seed=6)
    options = GraphOptions(**{**OPTIONS.__dict__, "adapter_slots": 0})
    model = DiffusionLM(spec, prepare_weights(spec, weights, options), mask_token_id=3, top_k=options.top_k)
    apply_lora(
        model,
        LoraConfig(rank=4, targets=("q_proj", "k_proj", "o_proj", "up_proj", "lm_head", "embed_tokens")),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    lora = {name: StaticLora(a, b) for name, (a, b) in lora_factors(model).items()}
    assert {linear_weight(1, "up_proj"), LM_HEAD, EMBED} <= set(lora)
    graph = session(build_graph(spec, weights, options, lora=lora))
    ids = np.random.default_rng(2).integers(0, spec.vocab_size, 8)
    blocks = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    _compare(run(graph, feeds(spec, options, ids, blocks)), _reference(model, ids, blocks), spec.num_layers)
