import random

from runtime.backend import StepOutput
from runtime.denoise import Proposal, above_threshold, most_confident, propose
from runtime.settings import GenerationSettings


def output(rows):
    """rows: [(ids, logits, logsumexp)]"""
    return StepOutput(
        topk_ids=[r[0] for r in rows],
        topk_logits=[r[1] for r in rows],
        logsumexp=[r[2] for r in rows],
        entropy=[1.0] * len(rows),
        query=lambda r: [0.0],
    )


def test_most_confident_breaks_ties_by_position():
    proposals = [Proposal(3, 1, 0.5), Proposal(1, 2, 0.5), Proposal(2, 3, 0.9), Proposal(0, 4, 0.1)]
    assert [p.position for p in most_confident(proposals, 2)] == [2, 1]
    assert [p.position for p in most_confident(proposals, 3)] == [2, 1, 3]


def test_threshold_commits_all_above_or_the_best():
    proposals = [Proposal(0, 1, 0.95), Proposal(1, 2, 0.9), Proposal(2, 3, 0.2)]
    assert [p.position for p in above_threshold(proposals, 0.9)] == [0, 1]
    assert [p.position for p in above_threshold(proposals, 0.99)] == [0]


def test_mask_token_is_never_proposed():
    mask = 9
    out = output([([9, 4, 5], [5.0, 1.0, 0.0], 5.1), ([2, 9], [3.0, 2.0], 3.5)])
    for temperature in (0.0, 1.0, 10.0):
        settings = GenerationSettings(temperature=temperature)
        for seed in range(20):
            proposals = propose([0, 1], out, mask, settings, random.Random(seed))
            assert [p.token for p in proposals][0] in (4, 5) and proposals[1].token == 2


def test_confidence_is_full_vocabulary_probability():
    import math

    out = output([([4, 5], [math.log(0.6), math.log(0.3)], 0.0)])
    (p,) = propose([0], out, 99, GenerationSettings(), random.Random(0))
    assert p.token == 4 and abs(p.confidence - 0.6) < 1e-12
