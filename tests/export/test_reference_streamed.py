"""The streamed reference (one layer resident at a time) computes exactly what DiffusionLM computes:
the same modules in the same order, on float, 4-bit and lazily read weights, with static LoRA
branches and adapter banks."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import artifact
from ruvdllm_export.checkpoints.lazy import LazyWeights
from ruvdllm_export.onnx_graph import GraphOptions, StaticLora, prepare_weights
from ruvdllm_export.spec import EMBED, LM_HEAD, linear_weight
from ruvdllm_export.validate import graph_feeds, presents, random_banks
from tests.fixtures.tiny_models import tiny_spec, tiny_weights

torch = pytest.importorskip("torch")

from ruvdllm_export.reference import DiffusionLM  # noqa: E402
from ruvdllm_export.reference.streamed import StreamedReference, attach_lora_factors  # noqa: E402


def whole_model(spec, weights, top_k, lora):
    """The reference as it was: every layer resident, LoRA attached to its modules."""
    model = DiffusionLM(spec, weights, mask_token_id=3, top_k=top_k).eval()
    modules = {EMBED: model.embed, LM_HEAD: model.head}
    for layer, block in enumerate(model.layers):
        modules.update({linear_weight(layer, p): linear for p, linear in block.proj.items()})
    for name, factors in lora.items():
        attach_lora_factors(modules[name], factors.a, factors.b)

    def run(feeds):
        past = [
            (torch.from_numpy(feeds[artifact.past_key(i)]), torch.from_numpy(feeds[artifact.past_value(i)]))
            for i in range(spec.num_layers)
        ]
        banks = {
            n.split(".")[1]: (torch.from_numpy(feeds[n]), torch.from_numpy(feeds[n[:-1] + "b"]))
            for n in feeds
            if n.startswith("adapter.") and n.endswith(".a")
        }
        mix = feeds.get(artifact.ADAPTER_WEIGHTS)
        with torch.no_grad():
            out = model(
                torch.from_numpy(feeds[artifact.INPUT_IDS]),
                torch.from_numpy(feeds[artifact.POSITION_IDS]),
                torch.from_numpy(feeds[artifact.BLOCK_IDS]),
                output_offset=int(feeds[artifact.OUTPUT_OFFSET][0]),
                past=past if past[0][0].shape[2] else None,
                adapter_weights=None if mix is None else torch.from_numpy(mix),
                adapter_bank=banks or None,
            )
        return {k: v.numpy() for k, v in out.items() if k not in ("logits", "hidden")}

    return run


def lora_factors(spec, rng, names):
    shapes = {EMBED: (spec.vocab_size, spec.hidden_size), LM_HEAD: (spec.hidden_size, spec.vocab_size)}
    factors = {}
    for name in names:
        in_, out = shapes.get(name) or spec.linear_features()[name.split(".")[-2]]
        factors[name] = StaticLora(
            a=rng.standard_normal((4, in_)).astype(np.float32) * 0.1,
            b=rng.standard_normal((out, 4)).astype(np.float32) * 0.1,
        )
    return factors


@pytest.mark.parametrize(
    ("arch", "tied", "packed"),
    [("llama", True, True), ("qwen2", False, False), ("qwen3", False, True)],
)
def test_streamed_equals_the_whole_model(arch, tied, packed):
    spec = tiny_spec(arch, tied)
    weights = tiny_weights(arch, tied, seed=2)
    options = GraphOptions(adapter_slots=2, adapter_rank=2)
    if packed:  # what the exporter holds: 4-bit linears, an 8-bit table
        weights = prepare_weights(spec, weights, options)
    rng = np.random.default_rng(0)
    lora = lora_factors(
        spec, rng, [EMBED, LM_HEAD, linear_weight(0, "q_proj"), linear_weight(1, "down_proj")]
    )
    lazy = LazyWeights(
        {n: (lambda w=w: w) for n, w in weights.items()}, {n: w.shape for n, w in weights.items()}
    )
    streamed = StreamedReference(spec, lazy, top_k=5, lora=lora)
    whole = whole_model(spec, weights, 5, lora)

    ids = rng.integers(0, spec.vocab_size, 12)
    first = graph_feeds(spec, options, ids[:4], np.arange(4))
    expected_first = whole(first)
    second = graph_feeds(
        spec,
        options,
        ids[4:],
        np.arange(8) // 4,
        past=presents(spec, expected_first),
        output_offset=1,
        mix=rng.uniform(0, 1, (1, 8, 2)).astype(np.float32),
        banks=random_banks(spec, options, rng),
    )
    for feeds, expected in ((first, expected_first), (second, whole(second))):
        got = streamed(feeds)
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)
