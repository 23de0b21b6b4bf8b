"""The reference forward with one decoder layer's weights in memory at a time (export validation).

DiffusionLM holds every layer at once: for the parity check of a large export that is a second
copy of the model beside onnxruntime's, and a float32 one for a float checkpoint (28 GB for 7B).
StreamedReference runs the same modules (DecoderLayer, FrozenEmbedding, FrozenLinear) but builds
each layer from the weights only when the forward reaches it and drops it after:

    ids ─ embed ─► x ─┬─ build layer l from weights ─ run ─ drop ─┐ ×L ─ RMSNorm ─ head ─ outputs
                      └──────────────────────────────────────────┘

so one forward costs the token table plus one layer, whatever the depth; `weights` may be lazy
(checkpoints/lazy.py) or spilled (onnx_graph/spill.py). Its outputs are DiffusionLM's, computed by
the same code in the same order. A table of more than TABLE_SLICE_ROWS rows is not widened whole:
the embedding dequantizes only the rows its ids use, the head runs over row slices.
"""

from __future__ import annotations

import numpy as np
import torch

from runtime import artifact
from ruvdllm_export.onnx_graph.spill import concat_table_rows, table_rows
from ruvdllm_export.reference.functional import rms_norm, rope_tables
from ruvdllm_export.reference.linear import FrozenEmbedding, FrozenLinear
from ruvdllm_export.reference.masks import visibility
from ruvdllm_export.reference.model import DecoderLayer, _bank_calls, _check_weights
from ruvdllm_export.reference.outputs import graph_outputs
from ruvdllm_export.rope_scaling import rope_frequencies
from ruvdllm_export.spec import EMBED, FINAL_NORM, LM_HEAD, ModelSpec, linear_weight, weight_shape

Feeds = dict[str, np.ndarray]
# Tables up to this many rows are widened whole, as DiffusionLM does (SmolLM2's 49k: 113 MB); a
# larger one (Llama 3's 128k x 2k: 1 GB in float32) only at the rows a forward uses, and the head
# over slices of HEAD_SLICE_ROWS rows (128 MB each at hidden 2048).
TABLE_SLICE_ROWS = 65536
HEAD_SLICE_ROWS = 16384


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

    # --- the token table: whole when small, by row slices when large ----------------------------
    def _table_slicer(self, name: str):
        """(rows, start, stop -> the table's rows in its held form). A checkpoint that reads rows
        (LazyWeights.rows) is never read whole; a packed table is read once per forward."""
        weights = self.weights
        rows = weight_shape(weights, name)[0]
        if getattr(weights, "reads_rows", lambda _: False)(name):
            return rows, lambda start, stop: weights.rows(name, start, stop)
        table = weights[name]
        return rows, lambda start, stop: table_rows(table, start, stop)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The embedding; a large table is widened only at the rows the ids use (the same float32
        values FrozenEmbedding's whole-table dequantization gives them)."""
        if weight_shape(self.weights, EMBED)[0] <= TABLE_SLICE_ROWS:
            return self._with_lora(FrozenEmbedding(self.weights[EMBED]), EMBED)(ids)
        _, rows_of = self._table_slicer(EMBED)
        used, inverse = torch.unique(ids, return_inverse=True)
        table = {int(i): rows_of(int(i), int(i) + 1) for i in used}
        picked = concat_table_rows([table[int(i)] for i in used])
        x = FrozenEmbedding(picked)(inverse)
        if EMBED in self.lora:  # the PEFT embedding delta: (A[:, id])ᵀ Bᵀ, scale folded in
            a, b = (
                torch.from_numpy(np.asarray(f, np.float32)) for f in (self.lora[EMBED].a, self.lora[EMBED].b)
            )
            x = x + torch.nn.functional.embedding(ids, a.T) @ b.T
        return x

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits; a large table runs HEAD_SLICE_ROWS vocabulary rows at a time (each logit is
        its row's dot product: slicing the rows changes no operation)."""
        spec, weights = self.spec, self.weights
        name = EMBED if spec.tie_word_embeddings or LM_HEAD not in weights else LM_HEAD
        if weight_shape(weights, name)[0] <= TABLE_SLICE_ROWS:
            return self._with_lora(FrozenLinear(weights[name]), LM_HEAD)(hidden)
        rows, rows_of = self._table_slicer(name)
        lora = self.lora.get(LM_HEAD)
        if lora is not None:
            down = torch.nn.functional.linear(hidden, torch.from_numpy(np.asarray(lora.a, np.float32)))
            up = torch.from_numpy(np.asarray(lora.b, np.float32))
        parts = []
        for start in range(0, rows, HEAD_SLICE_ROWS):
            stop = min(start + HEAD_SLICE_ROWS, rows)
            logits = FrozenLinear(rows_of(start, stop))(hidden)
            if lora is not None:
                logits = logits + torch.nn.functional.linear(down, up[start:stop])
            parts.append(logits)
        return torch.cat(parts, dim=-1)

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
            x = self._embed(ids)
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
            offset = int(feeds[artifact.OUTPUT_OFFSET][0])
            if weight_shape(weights, EMBED)[0] > TABLE_SLICE_ROWS:  # only the output rows: as the graph
                hidden, offset = hidden[:, offset:], 0
            outputs = graph_outputs(self._head(hidden), hidden, offset, self.top_k)
        for layer, (key, value) in enumerate(presents):
            outputs[artifact.present_key(layer)] = key
            outputs[artifact.present_value(layer)] = value
        return {name: value.numpy() for name, value in outputs.items()}
