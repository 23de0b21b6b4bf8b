"""The reference forward with one decoder layer's weights in memory at a time (export validation).

DiffusionLM holds every layer at once: for the parity check of a large export that is a second
copy of the model beside onnxruntime's, and a float32 one for a float checkpoint (28 GB for 7B).
StreamedReference runs the same modules (DecoderLayer, FrozenEmbedding, FrozenLinear) but builds
each layer from the weights only when the forward reaches it and drops it after:

    ids ─ embed ─► x ─┬─ build layer l from weights ─ run ─ drop ─┐ ×L ─ RMSNorm ─ head ─ outputs
                      └──────────────────────────────────────────┘

so one forward costs the token table plus one layer, whatever the depth; `weights` may be lazy
(checkpoints/lazy.py). Its outputs are DiffusionLM's, computed by the same code in the same order.
"""

from __future__ import annotations

import numpy as np
import torch

from runtime import artifact
from ruvdllm_export.reference.functional import rms_norm, rope_tables
from ruvdllm_export.reference.linear import FrozenEmbedding, FrozenLinear
from ruvdllm_export.reference.masks import visibility
from ruvdllm_export.reference.model import DecoderLayer, _bank_calls, _check_weights
from ruvdllm_export.reference.outputs import graph_outputs
from ruvdllm_export.rope_scaling import rope_frequencies
from ruvdllm_export.spec import EMBED, FINAL_NORM, LM_HEAD, ModelSpec, linear_weight

Feeds = dict[str, np.ndarray]


def attach_lora_factors(module, a: np.ndarray, b: np.ndarray) -> None:
    """Static LoRA factors (scale folded in: a [r, in], b [out, r]) as `module`'s LoRA branch, the
    side branch y = W x + B (A x) the graph has, on a FrozenLinear or a FrozenEmbedding."""
    rank = a.shape[0]
    generator = torch.Generator().manual_seed(0)  # the factors are overwritten: init is irrelevant
    delta = module.add_lora(rank, float(rank), generator)  # alpha = rank: scale 1
    with torch.no_grad():
        delta.lora_A.copy_(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))
        delta.lora_B.copy_(torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)))


class StreamedReference:
    """feeds -> graph outputs (numpy), as DiffusionLM computes them, one layer resident at a time.

    Args:
        spec: the model; weights: canonical name -> float32 / Q4Tensor / the builder's prepared
            forms (4- and 8-bit linears run dequantized on the fly), possibly lazy.
        top_k: candidates per row; max_position: the graph's rotary table length.
        lora: canonical name -> factors with `.a`, `.b` (StaticLora), run as side branches.
    """

    def __init__(
        self,
        spec: ModelSpec,
        weights,
        top_k: int,
        max_position: int | None = None,
        lora: dict | None = None,
    ):
        _check_weights(spec, weights)
        self.spec, self.weights, self.top_k, self.lora = spec, weights, top_k, dict(lora or {})
        inv_freq, self.attention_factor = rope_frequencies(
            spec.head_dim, spec.rope_theta, spec.rope_scaling, max_position or spec.max_position
        )
        self.inv_freq = torch.from_numpy(inv_freq)

    def _with_lora(self, module, name: str):
        if name in self.lora:
            attach_lora_factors(module, self.lora[name].a, self.lora[name].b)
        return module

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        spec, weights = self.spec, self.weights
        ids = torch.from_numpy(feeds[artifact.INPUT_IDS])
        past = [
            (
                torch.from_numpy(feeds[artifact.past_key(layer)]),
                torch.from_numpy(feeds[artifact.past_value(layer)]),
            )
            for layer in range(spec.num_layers)
        ]
        past_len = past[0][0].shape[2]
        banks = {
            name.split(".")[1]: (torch.from_numpy(feeds[name]), torch.from_numpy(feeds[name[:-1] + "b"]))
            for name in feeds
            if name.startswith("adapter.") and name.endswith(".a")
        }
        mix = feeds.get(artifact.ADAPTER_WEIGHTS)
        with torch.no_grad():
            block_ids = torch.from_numpy(feeds[artifact.BLOCK_IDS])
            visible = visibility(block_ids, past_len).expand(ids.shape[0], -1, -1)
            positions = torch.from_numpy(feeds[artifact.POSITION_IDS])
            rope = rope_tables(positions, self.inv_freq, self.attention_factor)
            layer_banks = _bank_calls(
                None if mix is None else torch.from_numpy(mix), banks or None, spec.num_layers
            )
            x = self._with_lora(FrozenEmbedding(weights[EMBED]), EMBED)(ids)
            presents = []
            for index in range(spec.num_layers):
                layer = DecoderLayer(spec, weights, index)
                for proj, linear in layer.proj.items():
                    self._with_lora(linear, linear_weight(index, proj))
                x, present = layer(x, rope, visible, past[index] if past_len else None, layer_banks[index])
                presents.append(present)
                del layer  # its weights go before the next layer's are read
            norm = torch.from_numpy(np.asarray(weights[FINAL_NORM], dtype=np.float32))
            hidden = rms_norm(x, norm, spec.rms_norm_eps)
            tied = spec.tie_word_embeddings or LM_HEAD not in weights
            head = self._with_lora(FrozenLinear(weights[EMBED if tied else LM_HEAD]), LM_HEAD)
            outputs = graph_outputs(head(hidden), hidden, int(feeds[artifact.OUTPUT_OFFSET][0]), self.top_k)
        for layer, (key, value) in enumerate(presents):
            outputs[artifact.present_key(layer)] = key
            outputs[artifact.present_value(layer)] = value
        return {name: value.numpy() for name, value in outputs.items()}
