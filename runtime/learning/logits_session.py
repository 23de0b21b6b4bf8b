"""Loop B's forward on CPython: the model's own graph with its full-vocabulary logits exposed.

The serving graph returns only top-k candidates, logsumexp and entropy per row (docs/artifact.md);
the NLL of a given answer token needs that token's logit, which is usually not among the top k.
So at load the graph gets one more output, the tensor the head's TopK reads (the logits), and
loop B runs that copy in its own onnxruntime session: one thread, no spinning, so that it takes
one core at most from generation. Everything else — weights, attention, adapter slots — is the
serving graph's, node for node.

The bank's assembled factors are kept here; each forward writes the MicroLoRA under training into
its slot's columns (runtime/banks.py, `assemble`), so the loss is the runtime's forward with the
MicroLoRA in place.

CPython only (onnx to edit the graph, onnxruntime to run it), imported by nothing the browser loads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runtime import artifact
from runtime.artifact import ArtifactConfig
from runtime.backend import Chunk
from runtime.banks import Bank
from ruvdllm.errors import RuvdllmError

HEAD_TOPK = "/model/head/TopK"  # the node whose input is the logits (ruvdllm_export/onnx_graph/head.py)


def with_logits_output(graph: Path):
    """The graph's ModelProto with the head's logits [1, S', vocab] as an extra output, and its name."""
    import onnx  # CPython only: the browser does not run loop B's forward through this module

    model = onnx.load(os.fspath(graph))
    node = next((n for n in model.graph.node if n.name == HEAD_TOPK), None)
    if node is None:
        raise RuvdllmError(f"{graph}: no {HEAD_TOPK} node; loop B needs a graph exported by ruvdllm")
    name = node.input[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model, name


class LogitsSession:
    """Full logits for a chunk (no cache), with a bank and an optional MicroLoRA in one slot."""

    def __init__(self, graph: Path, config: ArtifactConfig, threads: int = 1):
        import onnxruntime as ort

        model, self.logits_name = with_logits_output(Path(graph))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        del model
        self.config = config
        self.inputs = {i.name for i in self.session.get_inputs()}
        empty = np.zeros((1, config.num_kv_heads, 0, config.head_dim), np.float32)
        self._past = {
            name(layer): empty
            for layer in range(config.num_layers)
            for name in (artifact.past_key, artifact.past_value)
        }
        self._factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.rank = config.adapter_rank

    def set_bank(self, bank: Bank) -> None:
        """Assemble the bank's factors once (the MicroLoRA's slot is overwritten per forward)."""
        from runtime.ort_backend import assemble_numpy

        self.rank = bank.rank
        self._factors = {
            t: assemble_numpy(bank, t, fan_in, fan_out) for t, (fan_in, fan_out) in bank.targets.items()
        }

    def forward(self, chunk: Chunk, slot: int | None = None, micro: dict | None = None) -> np.ndarray:
        """Logits [S', vocab] of the chunk's output rows; `micro`: the bank-layout factors
        (target -> (a [L, in, R], b [L, R, out])) to put into `slot` for this forward."""
        s = len(chunk)
        feed = {
            artifact.INPUT_IDS: np.asarray(chunk.input_ids, np.int64).reshape(1, s),
            artifact.POSITION_IDS: np.asarray(chunk.position_ids, np.int64).reshape(1, s),
            artifact.BLOCK_IDS: np.asarray(chunk.block_ids, np.int64).reshape(1, s),
            artifact.OUTPUT_OFFSET: np.asarray([chunk.output_offset], np.int64),
            **self._past,
        }
        if artifact.SEQLENS_K in self.inputs:  # a graph over a key/value buffer: this one is empty
            feed[artifact.SEQLENS_K] = np.asarray([s - 1], np.int32)
            feed[artifact.TOTAL_SEQUENCE_LENGTH] = np.asarray(s, np.int32)
        if artifact.ADAPTER_WEIGHTS in self.inputs:
            feed[artifact.ADAPTER_WEIGHTS] = np.asarray(chunk.adapter_weights, np.float32).reshape(1, s, -1)
        if artifact.ADAPTER_GATE in self.inputs:
            feed[artifact.ADAPTER_GATE] = np.ones((1, s), np.float32)
        for target, (a, b) in self._factors.items():
            if micro is not None and slot is not None:
                cols = slice(slot * self.rank, (slot + 1) * self.rank)
                a, b = a.copy(), b.copy()
                a[:, :, cols], b[:, cols, :] = micro[target]
            feed[artifact.adapter_a(target)] = a
            feed[artifact.adapter_b(target)] = b
        (logits,) = self.session.run([self.logits_name], feed)
        return logits[0]
