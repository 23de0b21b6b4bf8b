"""Shared helpers for the graph tests: tiny specs, feeds, and running a graph on ORT CPU."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from runtime import artifact
from ruvdllm_export.onnx_graph import GraphOptions
from ruvdllm_export.spec import ModelSpec
from tests.fixtures.tiny_models import tiny_spec  # noqa: F401  (re-exported for the graph tests)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the suite shares two cores
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def feeds(
    spec: ModelSpec,
    options: GraphOptions,
    input_ids: np.ndarray,
    block_ids: np.ndarray,
    *,
    position_ids: np.ndarray | None = None,
    output_offset: int = 0,
    past: list[tuple[np.ndarray, np.ndarray]] | None = None,
    adapter_weights: np.ndarray | None = None,
    banks: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    s = input_ids.shape[-1]
    p = 0 if not past else past[0][0].shape[2]
    out = {
        artifact.INPUT_IDS: input_ids.reshape(1, s).astype(np.int64),
        artifact.POSITION_IDS: (np.arange(p, p + s) if position_ids is None else position_ids)
        .reshape(1, s)
        .astype(np.int64),
        artifact.BLOCK_IDS: np.asarray(block_ids).reshape(1, s).astype(np.int64),
        artifact.OUTPUT_OFFSET: np.array([output_offset], np.int64),
    }
    for layer in range(spec.num_layers):
        if past:
            key, value = past[layer]
        else:
            key = value = np.zeros((1, spec.num_kv_heads, 0, spec.head_dim), np.float32)
        out[artifact.past_key(layer)] = key
        out[artifact.past_value(layer)] = value
    if options.has_adapters:
        width = options.adapter_slots * options.adapter_rank
        out[artifact.ADAPTER_WEIGHTS] = (
            np.zeros((1, s, options.adapter_slots), np.float32)
            if adapter_weights is None
            else adapter_weights
        ).astype(np.float32)
        for target in options.adapter_targets:
            if banks and target in banks:
                a, b = banks[target]
            else:
                in_, out_ = spec.linear_features()[target]
                a = np.zeros((spec.num_layers, in_, width), np.float32)
                b = np.zeros((spec.num_layers, width, out_), np.float32)
            out[artifact.adapter_a(target)] = a.astype(np.float32)
            out[artifact.adapter_b(target)] = b.astype(np.float32)
    return out


def run(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs by name; a graph with the adapter switch gets adapter_gate 1 (the conversion adapter
    on, as the diffusion samplers run it) unless the feed sets it."""
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    if artifact.ADAPTER_GATE in wanted and artifact.ADAPTER_GATE not in feed:
        s = feed[artifact.INPUT_IDS].shape[-1]
        feed = {**feed, artifact.ADAPTER_GATE: np.ones((1, s), np.float32)}
    return dict(zip(names, sess.run(names, feed), strict=True))


def presents(spec: ModelSpec, outputs: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (outputs[artifact.present_key(layer)], outputs[artifact.present_value(layer)])
        for layer in range(spec.num_layers)
    ]


def summary_from_logits(logits: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
    """What the graph returns, computed in float64 from full logits [S, V] (the independent check)."""
    logits = logits.astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    p = np.exp(logits - lse[:, None])
    entropy = lse - (p * logits).sum(-1)
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :top_k]
    return {
        "topk_ids": order,
        "topk_logits": np.take_along_axis(logits, order, -1),
        "logsumexp": lse,
        "entropy": entropy,
    }
