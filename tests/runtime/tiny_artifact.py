"""A tiny exported model directory for end-to-end runtime tests: a real Q4 ONNX graph of a random
LLaMA-family checkpoint, a real BPE tokenizer, config.json and manifest.json as docs/artifact.md
lays them out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime import artifact
from runtime.artifact import ArtifactConfig
from runtime.banks import Bank
from ruvdllm_export.onnx_graph import GraphOptions, StaticLora
from ruvdllm_export.onnx_graph.ar_graph import build_ar_graph, wants_ar_graph
from ruvdllm_export.onnx_graph.builder import build_graph
from tests.export.graph_harness import tiny_spec
from tests.fixtures.tiny_models import ARCHS, TINY, random_conversion_adapter, tiny_weights
from tests.fixtures.tiny_tokenizer import CHATML_TEMPLATE, make_tokenizer

MASK_ID = 3  # <|mask|> in the tiny tokenizer
SLOTS, RANK, TOP_K = 5, 2, 16


def make_tiny_artifact(
    directory: Path,
    arch: str = "llama",
    seed: int = 0,
    conversion_adapter: bool = False,
    adapter_switch: bool = True,
    adapter_slots: int = SLOTS,
) -> Path:
    """`conversion_adapter`: bake in a random conversion adapter, with its per-row switch (what the
    verified and AR samplers need) unless not `adapter_switch` (`--no-adapter-switch`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = tiny_spec(arch, tied=False)
    options = GraphOptions(  # the cpu target's attention (over a key/value buffer), float activations
        top_k=TOP_K,
        adapter_slots=adapter_slots,
        adapter_rank=RANK,
        adapter_switch=adapter_switch,
        attention="gqa",
        kv_buffer=True,
    )
    lora = None
    if conversion_adapter:
        lora = {name: StaticLora(a=a, b=b) for name, (a, b) in random_conversion_adapter(spec).items()}
    weights = tiny_weights(arch, False, seed)
    model = build_graph(spec, weights, options, lora=lora)
    import onnx

    onnx.save(model, directory / artifact.GRAPH_NAME)
    ar_graph = wants_ar_graph(options, bool(lora), "cpu")
    if ar_graph:  # weights held in the proto here (the exporter's share the data file)
        onnx.save(build_ar_graph(spec, weights, options, "cpu"), directory / artifact.AR_GRAPH_NAME)
    make_tokenizer(TINY.vocab_size, ARCHS[arch].tokenizer_style).save(
        str(directory / artifact.TOKENIZER_NAME)
    )
    config = ArtifactConfig(
        architecture=arch,
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position=spec.max_position,
        mask_token_id=MASK_ID,
        bos_token_id=spec.bos_token_id,
        eos_token_ids=spec.eos_token_ids,
        pad_token_id=spec.pad_token_id,
        block_size=4,
        top_k=TOP_K,
        adapter_slots=adapter_slots,
        adapter_rank=RANK,
        chat_template=CHATML_TEMPLATE,
        adapter_gate=conversion_adapter and adapter_switch,
        ar_graph=ar_graph,
        source={"static_adapter": {"linears": len(lora)}} if lora else {},
    )
    (directory / artifact.CONFIG_NAME).write_text(config.to_json())
    artifact.write_manifest(directory)
    return directory


def random_bank(config: ArtifactConfig, seed: int = 0, patterns: int = 32, scale: float = 0.5) -> Bank:
    """A bank with an adapter in every slot and DGR patterns: large enough to change outputs."""
    rng = np.random.default_rng(seed)
    bank = Bank.for_model(config)
    for slot in range(bank.slots):
        factors = {}
        for target, (fan_in, fan_out) in bank.targets.items():
            a = rng.standard_normal((bank.layers, fan_in, bank.rank)) * scale / np.sqrt(fan_in)
            b = rng.standard_normal((bank.layers, bank.rank, fan_out)) * scale
            factors[target] = (a.astype(np.float32), b.astype(np.float32))
        bank.add_adapter(f"slot{slot}", slot, factors)
    groups = len(config.timestep_groups) - 1
    vectors = rng.standard_normal((patterns, config.hidden_size)).astype(np.float32)
    bank.add_patterns(vectors, [groups + i % (bank.slots - groups) for i in range(patterns)])
    return bank
