"""Held-out evaluation of a conversion adapter: masked-token NLL and ELBO with fixed masks, and
how sure the model is where it is right — the numbers parallel decoding lives on (threshold
decoding commits what clears its threshold, so the share above it and that share's accuracy
say how many tokens a step can commit and at what precision)."""

from __future__ import annotations

import torch

from ruvdllm_export.convert.objectives import LossResult, ObjectiveConfig, diffusion_loss
from ruvdllm_export.reference.model import DiffusionLM

EVAL_SEED = 20_250_101  # fixed masks for every evaluation: differences are the model's, not the noise's


@torch.no_grad()
def evaluate(
    model: DiffusionLM,
    held_out: torch.Tensor,
    objective: ObjectiveConfig,
    rows: int,
    adapter_bank=None,
    slot_weights=None,
) -> dict:
    """Masked-token NLL and ELBO per token on held-out rows with fixed masks (the full diffusion
    pattern, one noisy copy: the standard ELBO estimate), and how sure the model is where it is
    right (`certainty_metrics`)."""
    plain = ObjectiveConfig(objective.objective, objective.block_size, complementary=False)
    results = [
        diffusion_loss(
            model,
            held_out[i : i + 1],
            plain,
            torch.Generator().manual_seed(EVAL_SEED + i),
            1.0,
            adapter_bank,
            slot_weights,
        )
        for i in range(min(rows, held_out.shape[0]))
    ]
    count = sum(r.count for r in results)
    return {
        "masked_nll": sum(r.nll for r in results) / max(count, 1),
        "elbo": sum(r.elbo for r in results) / max(sum(r.positions for r in results), 1),
        "masked": count,
        **certainty_metrics(results),
    }


def certainty_metrics(results: list[LossResult]) -> dict:
    """Over all masked targets of `results`: accuracy (top token = target), the mean entropy and
    confidence of the correct predictions, the share confident enough for threshold decoding and
    how often those confident ones are right (its precision)."""
    count = sum(r.count for r in results)
    correct = sum(r.correct for r in results)
    confident = sum(r.confident for r in results)
    return {
        "accuracy": correct / max(count, 1),
        "correct_entropy": sum(r.correct_entropy for r in results) / max(correct, 1),
        "correct_confidence": sum(r.correct_confidence for r in results) / max(correct, 1),
        "confident": confident / max(count, 1),
        "confident_accuracy": sum(r.confident_correct for r in results) / max(confident, 1),
    }
