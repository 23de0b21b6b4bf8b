"""The conversion objectives: the training layout computes exactly what the samplers compute
(docs/sampling.md §2-3), masks and weights are the ELBO's, and a few steps of training lower it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvdllm_export.convert.objectives import (
    ObjectiveConfig,
    bd3lm_layout,
    diffusion_loss,
    make_layouts,
    mdlm_layouts,
    teacher_probabilities,
)
from ruvdllm_export.reference import DiffusionLM, LoraConfig, apply_lora, lora_parameters
from tests.export.reference_models import OBJECTIVE_MASK, random_tokens, tiny_checkpoint, tiny_objective_model

torch.set_num_threads(1)
MASK = OBJECTIVE_MASK
tiny_model = tiny_objective_model
_tokens = random_tokens


@pytest.mark.parametrize("complementary", [False, True])
@pytest.mark.parametrize("block_size", [1, 4, 5])
def test_bd3lm_training_logits_equal_the_sampler_chunk(block_size, complementary):
    """Every target's training logits equal the logits the BD3LM sampler's chunk gives for that
    block: committed tokens causal, the block bidirectional over them, row r predicting r + 1."""
    model = tiny_model()
    tokens = _tokens(23, seed=block_size)
    config = ObjectiveConfig("bd3lm", block_size, complementary)
    layout = bd3lm_layout(tokens, MASK, config, torch.Generator().manual_seed(7))
    with torch.no_grad():
        hidden, _ = model.backbone(
            layout.input_ids[None], layout.position_ids[None], visible=layout.target[None]
        )
        train_logits = model.head(hidden[0, layout.source_rows])
    n = tokens.shape[0]
    # Rebuild each target's prediction through the sampler's chunk (docs/sampling.md §3).
    for i, (p, c) in enumerate(
        zip(layout.target_positions.tolist(), layout.target_copies.tolist(), strict=True)
    ):
        start = layout.offset + (p - layout.offset) // block_size * block_size
        end = min(start + block_size, n)
        noisy = layout.input_ids[c * n : (c + 1) * n]
        chunk = torch.cat([tokens[:start], noisy[start:end]])
        block_ids = torch.tensor([list(range(start)) + [start] * (end - start)])
        with torch.no_grad():
            out = model(chunk[None], torch.arange(end)[None], block_ids, output_offset=start - 1)
        torch.testing.assert_close(train_logits[i], out["logits"][0, p - 1], rtol=1e-4, atol=1e-4)
        assert int(layout.targets[i]) == int(tokens[p]) and int(noisy[p]) == MASK
    assert layout.targets.numel() == int((layout.input_ids[:-n] == MASK).sum())


def test_mdlm_training_logits_equal_the_sampler_forward():
    """MDLM: a bidirectional forward over lead + span, row p - 1 predicting p (§2)."""
    model = tiny_model()
    tokens = _tokens(17, seed=1)
    for layout in mdlm_layouts(tokens, MASK, ObjectiveConfig("mdlm"), torch.Generator().manual_seed(2)):
        n = tokens.shape[0]
        with torch.no_grad():
            out = model(layout.input_ids[None], torch.arange(n)[None], torch.zeros(1, n, dtype=torch.long))
            hidden, _ = model.backbone(
                layout.input_ids[None], layout.position_ids[None], visible=layout.target[None]
            )
        torch.testing.assert_close(
            model.head(hidden[0, layout.source_rows]), out["logits"][0, layout.source_rows]
        )
        masked = (layout.input_ids == MASK).nonzero().flatten()
        assert torch.equal(layout.source_rows, masked - 1) and 0 not in masked.tolist()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 40),
    block_size=st.integers(1, 12),
    complementary=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_bd3lm_masks_and_weights(n, block_size, complementary, seed):
    """Each block masks k in 1..b tokens and weighs them b / k (t = k / b, the runtime's t);
    complementary copies split every block position between them; targets come from earlier rows."""
    tokens = _tokens(n, seed % 1000)
    layout = bd3lm_layout(
        tokens, MASK, ObjectiveConfig("bd3lm", block_size, complementary), torch.Generator().manual_seed(seed)
    )
    copies = layout.input_ids.shape[0] // n - 1
    assert copies == (2 if complementary else 1)
    masked = torch.stack([layout.input_ids[c * n : (c + 1) * n] == MASK for c in range(copies)])
    assert torch.equal(layout.input_ids[copies * n :], tokens)
    offset = layout.offset
    assert layout.positions == copies * (n - offset)
    assert 1 <= offset <= block_size and not masked[:, :offset].any()
    if complementary:
        assert not (masked[0] & masked[1]).any() and (masked[0] | masked[1])[offset:].all()
    for begin in range(offset, n, block_size):
        b = min(block_size, n - begin)
        k = int(masked[0, begin : begin + b].sum())
        assert 1 <= k <= b
        rows_t = layout.row_t[begin : begin + b]
        assert torch.allclose(rows_t, torch.full_like(rows_t, k / b))
    assert torch.allclose(layout.weights[: int(masked[0].sum())], 1.0 / layout.row_t[:n][masked[0]])


def test_visibility_never_leaks_the_target_into_its_predictor():
    """A target's source row never sees the target's clean token (that would be copying)."""
    tokens = _tokens(30, seed=4)
    layout = bd3lm_layout(tokens, MASK, ObjectiveConfig("bd3lm", 4, True), torch.Generator().manual_seed(1))
    n = tokens.shape[0]
    clean = layout.input_ids.shape[0] - n
    for row, position in zip(layout.source_rows.tolist(), layout.target_positions.tolist(), strict=True):
        assert int(layout.position_ids[row]) == position - 1  # the shift
        assert not layout.target[row, clean + position :].any()


@pytest.mark.parametrize("objective", ["bd3lm", "mdlm"])
def test_training_lowers_the_loss(objective):
    """Forty LoRA steps on one repeated row: the diffusion loss must fall (it can only fail if
    gradients do not reach the adapter or the targets are wrong)."""
    _, spec, weights = tiny_checkpoint("llama", tied=False, seed=3)
    model = DiffusionLM(spec, weights, mask_token_id=MASK)
    apply_lora(model, LoraConfig(rank=4, seed=0))
    optimizer = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    batch = _tokens(24, seed=9)[None]
    config = ObjectiveConfig(objective, 4)

    def loss_at(seed: int) -> float:
        with torch.no_grad():
            return (
                sum(
                    float(diffusion_loss(model, batch, config, torch.Generator().manual_seed(s)).loss)
                    for s in range(seed, seed + 8)
                )
                / 8
            )

    before = loss_at(100)
    for step in range(40):
        optimizer.zero_grad()
        diffusion_loss(model, batch, config, torch.Generator().manual_seed(step)).loss.backward()
        optimizer.step()
    assert loss_at(100) < 0.8 * before


def test_loss_is_a_per_token_elbo():
    """loss = sum(CE / t) / positions, and nll / count is the plain masked-token CE."""
    model = tiny_model()
    batch = _tokens(20, seed=5)[None]
    config = ObjectiveConfig("bd3lm", 4, complementary=False)
    result = diffusion_loss(model, batch, config, torch.Generator().manual_seed(3))
    layout = bd3lm_layout(batch[0], MASK, config, torch.Generator().manual_seed(3))
    with torch.no_grad():
        hidden, _ = model.backbone(
            layout.input_ids[None], layout.position_ids[None], visible=layout.target[None]
        )
        ce = F.cross_entropy(model.head(hidden[0, layout.source_rows]), layout.targets, reduction="none")
    assert result.count == layout.targets.numel()
    assert result.nll == pytest.approx(float(ce.sum()), rel=1e-5)
    assert float(result.loss) == pytest.approx(
        float((ce * layout.weights).sum()) / layout.positions, rel=1e-5
    )


@pytest.mark.parametrize("objective", ["bd3lm", "mdlm"])
def test_teacher_is_the_unadapted_model_reading_the_clean_row_causally(objective):
    """The teacher's distribution for a target at p is the base model's causal next-token
    distribution at p - 1, whatever the attached adapter holds, and the adapter is back after."""
    _, spec, weights = tiny_checkpoint("llama", tied=False, seed=3)
    model = DiffusionLM(spec, weights, mask_token_id=MASK).eval()
    batch = torch.stack([_tokens(20, seed=11), _tokens(20, seed=12)])
    with torch.no_grad():
        causal = model(batch, torch.arange(20).expand(2, 20), torch.arange(20).expand(2, 20))["logits"]
    apply_lora(model, LoraConfig(rank=4, seed=0))
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.5)  # an adapter that changes every output
    layouts = make_layouts(batch, MASK, ObjectiveConfig(objective, 4), torch.Generator().manual_seed(2))
    teacher = teacher_probabilities(model, batch, layouts)
    expected = torch.cat([causal[lay.row, lay.target_positions - 1] for lay in layouts]).softmax(-1)
    torch.testing.assert_close(teacher, expected, rtol=1e-4, atol=1e-6)
    assert len(lora_parameters(model)) == 2 * 7 * spec.num_layers


def test_teacher_weight_mixes_label_and_teacher_losses_linearly():
    """loss(w) = (1 - w) loss(0) + w loss(1) on the same masks; the NLL beside it stays the labels'."""
    model = tiny_model()
    batch = _tokens(20, seed=5)[None]
    config = ObjectiveConfig("bd3lm", 4)

    def at(w: float):
        return diffusion_loss(model, batch, config, torch.Generator().manual_seed(3), teacher_weight=w)

    labels, teacher, half = at(0.0), at(1.0), at(0.5)
    assert float(half.loss) == pytest.approx(0.5 * float(labels.loss) + 0.5 * float(teacher.loss), rel=1e-5)
    assert half.nll == pytest.approx(labels.nll, rel=1e-6) and half.elbo == pytest.approx(
        labels.elbo, rel=1e-6
    )
    with pytest.raises(ValueError, match="teacher weight"):
        at(1.5)
