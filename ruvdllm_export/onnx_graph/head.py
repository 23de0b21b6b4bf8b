"""The small outputs the runtime reads instead of full-vocabulary logits.

Only rows output_offset..S-1 reach the LM head (prompt rows are skipped). From each row's logits the
graph returns the top-k candidates, logsumexp (so p = exp(logit − logsumexp) for any candidate),
the entropy over the whole vocabulary (the uncertainty that drives remasking and DGR), and the
L2-normalised hidden state that fed the head (the DGR retrieval key).
"""

from __future__ import annotations

import numpy as np

from runtime import artifact
from ruvdllm_export.onnx_graph.graph import FLOAT, INT64, GraphBuilder

SCOPE = "/model/head"
INT64_MAX = np.iinfo(np.int64).max


def make_output_rows(g: GraphBuilder, x: str, output_offset: str, scope: str) -> str:
    """x [1, S, ...] → x[:, output_offset:] [1, S', ...]."""
    return g.op("Slice", [x, output_offset, g.const([INT64_MAX]), g.const([1])], f"{scope}/Slice_output_rows")


def make_head_outputs(g: GraphBuilder, logits: str, top_k: int) -> None:
    """logits [1, S', vocab] → topk_ids, topk_logits, logsumexp, entropy (graph outputs).

        logits ─TopK(k)──────────────────────────────► topk_logits, topk_ids
        logits ─Softmax─► p ─Mul(logits)─ReduceSum(-1)─► E[logit]
                          └─GatherElements(top-1 id)─Log─► log p_max
        logsumexp = topk_logits[..., 0] − log p_max;   entropy = logsumexp − E[logit]

    Two passes over the vocabulary (Softmax, Mul+ReduceSum) instead of a separate
    ReduceLogSumExp, whose CPU kernel took longer than Softmax itself. p_max = 1 / Σ exp(l − max)
    is at least 1/vocab, so its log is as exact as logsumexp's own."""
    scope = SCOPE
    topk_logits, topk_ids = g.op(
        "TopK",
        [logits, g.const([top_k])],
        f"{scope}/TopK",
        outputs=[artifact.TOPK_LOGITS, artifact.TOPK_IDS],
        axis=-1,
        largest=1,
        sorted=1,
    )
    axis = g.const([-1])
    first = [g.const([0]), g.const([1]), axis]  # Slice starts, ends, axes: element 0 of the last axis
    probs = g.op("Softmax", [logits], f"{scope}/Softmax", axis=-1)
    top1_id = g.op("Slice", [topk_ids, *first], f"{scope}/Slice_top1_id")
    top1_logit = g.op("Slice", [topk_logits, *first], f"{scope}/Slice_top1_logit")
    top1_prob = g.op("GatherElements", [probs, top1_id], f"{scope}/GatherElements_top1_prob", axis=-1)
    log_top1 = g.op("Log", [top1_prob], f"{scope}/Log_top1_prob")
    lse = g.op("Sub", [top1_logit, log_top1], f"{scope}/Sub_logsumexp")
    g.op("Squeeze", [lse, axis], f"{scope}/Squeeze_logsumexp", outputs=[artifact.LOGSUMEXP])
    # H = -Σ p log p = -Σ p (logit − lse) = lse − Σ p·logit  (Σ p = 1)
    weighted = g.op("Mul", [probs, logits], f"{scope}/Mul_probs_logits")
    expected = g.op("ReduceSum", [weighted, axis], f"{scope}/ReduceSum_expected_logit", keepdims=0)
    g.op("Sub", [artifact.LOGSUMEXP, expected], f"{scope}/Sub_entropy", outputs=[artifact.ENTROPY])
    g.output(artifact.TOPK_IDS, INT64, [1, "output_sequence", top_k])
    g.output(artifact.TOPK_LOGITS, FLOAT, [1, "output_sequence", top_k])
    g.output(artifact.LOGSUMEXP, FLOAT, [1, "output_sequence"])
    g.output(artifact.ENTROPY, FLOAT, [1, "output_sequence"])


def make_query(g: GraphBuilder, hidden: str, hidden_size: int) -> None:
    """hidden [1, S', d] → query = hidden / max(‖hidden‖₂, 1e-12) (graph output).

    hidden ─ReduceL2(-1, keepdims)─Max(eps)─► norm;  hidden ─Div(norm)─► query
    """
    scope = "/model/query"
    norm = g.op("ReduceL2", [hidden, g.const([-1])], f"{scope}/ReduceL2", keepdims=1)
    norm = g.op("Max", [norm, g.const(1e-12, np.float32)], f"{scope}/Max_eps")
    g.op("Div", [hidden, norm], f"{scope}/Div", outputs=[artifact.QUERY])
    g.output(artifact.QUERY, FLOAT, [1, "output_sequence", hidden_size])
