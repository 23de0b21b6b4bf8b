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

    logits ─TopK(k)──────────────► topk_logits, topk_ids
    logits ─ReduceLogSumExp(-1)──► logsumexp
    logits ─Softmax─► p ─Mul(logits)─ReduceSum(-1)─► E[logit];  entropy = logsumexp − E[logit]
    """
    g.op(
        "TopK",
        [logits, g.const([top_k])],
        f"{SCOPE}/TopK",
        outputs=[artifact.TOPK_LOGITS, artifact.TOPK_IDS],
        axis=-1,
        largest=1,
        sorted=1,
    )
    axis = g.const([-1])
    g.op(
        "ReduceLogSumExp",
        [logits, axis],
        f"{SCOPE}/ReduceLogSumExp",
        outputs=[artifact.LOGSUMEXP],
        keepdims=0,
    )
    # H = -Σ p log p = -Σ p (logit − lse) = lse − Σ p·logit  (Σ p = 1)
    probs = g.op("Softmax", [logits], f"{SCOPE}/Softmax", axis=-1)
    weighted = g.op("Mul", [probs, logits], f"{SCOPE}/Mul_probs_logits")
    expected = g.op("ReduceSum", [weighted, axis], f"{SCOPE}/ReduceSum_expected_logit", keepdims=0)
    g.op("Sub", [artifact.LOGSUMEXP, expected], f"{SCOPE}/Sub_entropy", outputs=[artifact.ENTROPY])
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
