"""The graph's small outputs from full logits: what the runtime reads each step instead of
the whole vocabulary (docs/artifact.md, "Graph outputs")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime import artifact


def graph_outputs(
    logits: torch.Tensor, hidden: torch.Tensor, output_offset: int, top_k: int
) -> dict[str, torch.Tensor]:
    """logits [B, S, V], hidden [B, S, H] -> top-k ids/logits (descending), logsumexp and
    entropy (nats, temperature 1) over the whole vocabulary, and the L2-normalised hidden state
    as the DGR query, all for rows output_offset .. S-1."""
    rows = logits[:, output_offset:].float()  # [B, S', V]
    topk_logits, topk_ids = torch.topk(rows, min(top_k, rows.shape[-1]), dim=-1, sorted=True)
    logsumexp = torch.logsumexp(rows, dim=-1)
    log_probs = rows - logsumexp[..., None]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return {
        artifact.TOPK_IDS: topk_ids,
        artifact.TOPK_LOGITS: topk_logits,
        artifact.LOGSUMEXP: logsumexp,
        artifact.ENTROPY: entropy,
        artifact.QUERY: F.normalize(hidden[:, output_offset:].float(), dim=-1),
    }
