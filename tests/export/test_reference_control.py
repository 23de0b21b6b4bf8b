"""The reference sampler's adapter rows (TALoRA + DGR, in torch) against the runtime's
standard-library AdapterControl fed the very same step outputs."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import artifact
from runtime.backend import StepOutput
from runtime.control import AdapterControl
from runtime.dgr import STRATEGIES, DgrConfig
from runtime.index import ExactIndex
from runtime.talora import TaloraConfig
from ruvdllm_export.reference.control import Adapters, AdapterState

SLOTS, GROUPS, VOCAB, HIDDEN, K = 7, 3, 50, 8, 4


def _outputs(seed: int, rows: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, VOCAB, generator=generator) * 3
    top = torch.topk(logits, K)
    lse = torch.logsumexp(logits, -1)
    p = torch.softmax(logits, -1)
    return {
        artifact.TOPK_IDS: top.indices[None],
        artifact.TOPK_LOGITS: top.values[None],
        artifact.LOGSUMEXP: lse[None],
        artifact.ENTROPY: (-(p * p.log()).sum(-1))[None],
        artifact.QUERY: torch.nn.functional.normalize(torch.randn(rows, HIDDEN, generator=generator), dim=-1)[
            None
        ],
    }


def _as_step_output(out: dict[str, torch.Tensor]) -> StepOutput:
    return StepOutput(
        topk_ids=out[artifact.TOPK_IDS][0].tolist(),
        topk_logits=out[artifact.TOPK_LOGITS][0].tolist(),
        logsumexp=out[artifact.LOGSUMEXP][0].tolist(),
        entropy=out[artifact.ENTROPY][0].tolist(),
        query=lambda row: out[artifact.QUERY][0, row].tolist(),
    )


@settings(max_examples=40, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    threshold=st.sampled_from([0.2, 0.6, 0.9]),
    interpolation=st.sampled_from(["discrete", "linear", "soft"]),
    seed=st.integers(0, 10_000),
    min_similarity=st.sampled_from([-1.0, 0.0, 0.3]),
)
def test_rows_and_retrievals_match_the_runtime(strategy, threshold, interpolation, seed, min_similarity):
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randn(12, HIDDEN, generator=generator)
    pattern_slots = torch.randint(
        GROUPS - 1, SLOTS, (12,), generator=generator
    )  # some point at TALoRA slots: ignored
    dgr = DgrConfig(
        strategy=strategy, threshold=threshold, budget=3, neighbours=5, min_similarity=min_similarity
    )
    talora = TaloraConfig(interpolation=interpolation)
    ours = AdapterState(Adapters({}, SLOTS, GROUPS, talora, dgr, patterns, pattern_slots), VOCAB)
    index = ExactIndex(HIDDEN)
    index.add(patterns.tolist(), pattern_slots.tolist())
    theirs = AdapterControl(SLOTS, GROUPS, VOCAB, talora, dgr, index)

    span, context = 6, 3
    masked = list(range(span))
    for step in range(4):
        t = len(masked) / span
        rows = ours.inputs(context, span, t)["adapter_weights"][0]
        expected = torch.tensor(theirs.rows(context, span, t), dtype=torch.float32)
        torch.testing.assert_close(rows, expected, atol=1e-6, rtol=0)
        out = _outputs(seed * 10 + step, span)
        masked = masked[1:]  # one position committed per step
        assert ours.after_step(out, masked, t, step) == theirs.after_step(
            _as_step_output(out), masked, t, step
        )
        assert math.isclose(ours.theta, theirs.theta, abs_tol=1e-12)


def test_no_patterns_means_no_retrieval_and_talora_off_means_zero_weights():
    ours = AdapterState(Adapters({}, SLOTS, GROUPS, talora=None, dgr=DgrConfig()), VOCAB)
    assert ours.dgr is None
    assert ours.after_step(_outputs(0, 4), [0, 1, 2, 3], 1.0, 0) == []
    assert torch.count_nonzero(ours.inputs(2, 4, 0.5)["adapter_weights"]) == 0
    assert AdapterState(None, VOCAB).inputs(2, 4, 0.5) == {}
