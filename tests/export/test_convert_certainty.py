"""Certainty forcing (convert/objectives.py): the entropy penalty on correctly predicted masked
targets is zero when off, never negative, counts only the correct targets, and its gradient makes
those predictions more confident."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvdllm_export.convert.objectives import (
    CONFIDENT,
    ObjectiveConfig,
    certainty_loss,
    certainty_terms,
    diffusion_loss,
    make_layouts,
)
from ruvdllm_export.reference import DiffusionLM, LoraConfig, apply_lora, lora_parameters
from tests.export.reference_models import OBJECTIVE_MASK, random_tokens, tiny_checkpoint, tiny_objective_model

torch.set_num_threads(1)
MASK = OBJECTIVE_MASK
tiny_model = tiny_objective_model
_tokens = random_tokens


def _logits_and_targets(seed: int, rows: int, vocab: int, scale: float, hits: int):
    """Random logits [rows, vocab] and targets of which the first `hits` are the argmax."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator, dtype=torch.float64) * scale
    targets = torch.randint(vocab, (rows,), generator=generator)
    best = logits.argmax(-1)
    targets[:hits] = best[:hits]
    wrong = (best[hits:] + 1) % vocab  # never the argmax (ties have probability zero)
    targets[hits:] = wrong
    return logits, targets


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    rows=st.integers(1, 12),
    vocab=st.integers(2, 40),
    scale=st.floats(0.1, 8.0),
    data=st.data(),
)
def test_certainty_is_the_mean_entropy_of_the_correct_targets_only(seed, rows, vocab, scale, data):
    hits = data.draw(st.integers(0, rows))
    logits, targets = _logits_and_targets(seed, rows, vocab, scale, hits)
    entropy, correct = certainty_terms(F.log_softmax(logits, -1), targets)
    assert correct.tolist() == [True] * hits + [False] * (rows - hits)
    assert bool((entropy >= -1e-12).all()) and bool((entropy <= torch.log(torch.tensor(vocab)) + 1e-9).all())
    value = float(certainty_loss(entropy, correct))
    expected = float(entropy[:hits].mean()) if hits else 0.0
    assert value == pytest.approx(expected, abs=1e-12) and value >= 0.0
    # The wrong predictions do not count: sharpening or flattening them leaves the term alone.
    changed = logits.clone()
    changed[hits:] *= 3.0
    entropy2, correct2 = certainty_terms(F.log_softmax(changed, -1), targets)
    assert float(certainty_loss(entropy2, correct2)) == pytest.approx(value, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31), rows=st.integers(1, 8), vocab=st.integers(3, 40), scale=st.floats(0.1, 4.0)
)
def test_its_gradient_lowers_the_entropy_and_keeps_the_prediction(seed, rows, vocab, scale):
    """A small step against the gradient lowers every correct target's entropy, raises its
    probability (the confidence threshold decoding reads) and keeps its argmax."""
    logits, targets = _logits_and_targets(seed, rows, vocab, scale, hits=rows)
    logits.requires_grad_(True)
    entropy, correct = certainty_terms(F.log_softmax(logits, -1), targets)
    certainty_loss(entropy, correct).backward()
    step = logits.detach() - 1e-3 * logits.grad / logits.grad.norm().clamp(min=1e-30)
    before = F.softmax(logits.detach(), -1)
    after = F.softmax(step, -1)
    entropy_after, _ = certainty_terms(F.log_softmax(step, -1), targets)
    assert bool((entropy_after <= entropy.detach() + 1e-12).all())
    assert float(entropy_after.sum()) < float(entropy.detach().sum())
    top = targets[:, None]
    assert bool((after.gather(-1, top) >= before.gather(-1, top) - 1e-12).all())
    assert torch.equal(step.argmax(-1), targets)


def test_the_term_is_added_with_its_weight_and_zero_when_off():
    """loss(β) = loss(0) + β · mean entropy of the correct targets, on the same masks; the
    measurements beside it (correct, confident) are the same at every β."""
    model = tiny_model()
    batch = torch.stack([_tokens(24, seed=5), _tokens(24, seed=6)])
    config = ObjectiveConfig("bd3lm", 4)

    def at(beta: float):
        return diffusion_loss(model, batch, config, torch.Generator().manual_seed(3), certainty_weight=beta)

    off, on = at(0.0), at(0.5)
    assert float(on.loss) == pytest.approx(float(off.loss) + 0.5 * off.certainty, rel=1e-5)
    assert on.nll == pytest.approx(off.nll) and on.correct == off.correct
    # By hand: the same targets' logits, their entropies, the argmax hits.
    layouts = make_layouts(batch, MASK, config, torch.Generator().manual_seed(3))
    assert off.count == sum(lay.targets.numel() for lay in layouts)
    if off.correct:
        assert off.certainty == pytest.approx(off.correct_entropy / off.correct, rel=1e-5)
        assert 0.0 < off.correct_confidence / off.correct <= 1.0
    else:
        assert off.certainty == 0.0
    assert 0 <= off.confident_correct <= off.confident <= off.count and 0.0 < CONFIDENT < 1.0
    with pytest.raises(ValueError, match="certainty weight"):
        at(-0.1)


def test_training_with_it_makes_correct_predictions_more_confident():
    """The same steps on the same masks with and without certainty forcing: with it, the correct
    held-in predictions end with lower entropy (the point of the term)."""

    def train(beta: float) -> tuple[float, float, int]:
        _, spec, weights = tiny_checkpoint("llama", tied=False, seed=3)
        model = DiffusionLM(spec, weights, mask_token_id=MASK)
        apply_lora(model, LoraConfig(rank=4, seed=0))
        optimizer = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
        batch = _tokens(24, seed=9)[None]
        config = ObjectiveConfig("bd3lm", 4)
        for step in range(30):
            optimizer.zero_grad()
            result = diffusion_loss(
                model, batch, config, torch.Generator().manual_seed(step), certainty_weight=beta
            )
            result.loss.backward()
            optimizer.step()
        with torch.no_grad():
            results = [
                diffusion_loss(model, batch, config, torch.Generator().manual_seed(100 + s)) for s in range(8)
            ]
        correct = sum(r.correct for r in results)
        confidence = sum(r.correct_confidence for r in results) / max(correct, 1)
        return sum(r.correct_entropy for r in results) / max(correct, 1), confidence, correct

    plain, plain_confidence, plain_correct = train(0.0)
    forced, forced_confidence, forced_correct = train(1.0)
    assert plain_correct > 0 and forced_correct > 0
    # Measured: entropy 4.44 -> 4.00 nats, confidence 0.27 -> 0.35 (a large β also costs NLL:
    # at β = 3 half the correct predictions were lost, hence a small weight in practice).
    assert forced < 0.95 * plain and forced_confidence > plain_confidence
