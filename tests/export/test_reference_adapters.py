"""The two low-rank paths of the torch model: the per-position adapter bank (the graph's
`adapter_weights` x `adapter.{target}.a/b`) and the static, trainable conversion LoRA."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ruvdllm_export.quant.q4 import quantize_q4
from ruvdllm_export.reference import (
    DiffusionLM,
    LoraConfig,
    apply_lora,
    bidirectional_block_ids,
    block_causal_block_ids,
    causal_block_ids,
    load_lora_state_dict,
    lora_as_bank,
    lora_deltas,
    lora_factors,
    lora_parameters,
    lora_state_dict,
    widened_lora_state,
)
from ruvdllm_export.reference.linear import FrozenLinear
from ruvdllm_export.spec import EMBED, LINEARS, LM_HEAD, linear_weight
from tests.export.reference_models import tiny_checkpoint

torch.set_num_threads(1)
SLOTS, RANK = 3, 2
TARGETS = ("q_proj", "v_proj", "down_proj")


@functools.cache
def tiny(architecture: str = "llama"):
    _, spec, weights = tiny_checkpoint(architecture, tied=False, seed=2)
    return spec, weights


def _model(architecture: str = "llama", weights: dict | None = None) -> DiffusionLM:
    spec, base = tiny(architecture)
    return DiffusionLM(spec, base if weights is None else weights, mask_token_id=0)


def _bank(spec, seed: int, targets=TARGETS) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    sizes = spec.linear_features()
    bank = {}
    for target in targets:
        fan_in, fan_out = sizes[target]
        a = torch.randn(spec.num_layers, fan_in, SLOTS * RANK, generator=generator) / fan_in**0.5
        b = torch.randn(spec.num_layers, SLOTS * RANK, fan_out, generator=generator) / RANK**0.5
        bank[target] = (a, b)
    return bank


def _run(model, ids, blocks, **kwargs) -> torch.Tensor:
    positions = torch.arange(ids.shape[1])[None]
    with torch.no_grad():
        return model(ids, positions, blocks, **kwargs)["logits"]


def _ids(length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


# --- the adapter bank ---------------------------------------------------------------------------


def test_zero_adapter_weights_give_the_base_exactly():
    spec, _ = tiny()
    model = _model()
    ids = _ids(9, spec.vocab_size)
    base = _run(model, ids, bidirectional_block_ids(9))
    zeros = torch.zeros(1, 9, SLOTS)
    with_bank = _run(
        model, ids, bidirectional_block_ids(9), adapter_weights=zeros, adapter_bank=_bank(spec, 1)
    )
    torch.testing.assert_close(with_bank, base, atol=0, rtol=0)


@pytest.mark.parametrize("slot", range(SLOTS))
def test_one_slot_at_weight_one_equals_merging_it(slot):
    """Slot k with weight 1 everywhere == W + (A_k B_k)ᵀ merged into the float base."""
    spec, weights = tiny()
    bank = _bank(spec, 2)
    merged = dict(weights)
    for target, (a, b) in bank.items():
        for layer in range(spec.num_layers):
            a_k = a[layer][:, slot * RANK : (slot + 1) * RANK]
            b_k = b[layer][slot * RANK : (slot + 1) * RANK]
            name = linear_weight(layer, target)
            merged[name] = weights[name] + (a_k @ b_k).T.numpy()
    adapter_weights = torch.zeros(1, 9, SLOTS)
    adapter_weights[..., slot] = 1.0
    ids = _ids(9, spec.vocab_size, seed=3)
    got = _run(
        _model(), ids, block_causal_block_ids(9, 4), adapter_weights=adapter_weights, adapter_bank=bank
    )
    expected = _run(_model(weights=merged), ids, block_causal_block_ids(9, 4))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(
    position=st.integers(0, 7),
    weights=st.lists(st.floats(-2, 2).filter(lambda w: abs(w) > 0.1), min_size=SLOTS, max_size=SLOTS),
)
def test_weights_at_one_position_change_only_rows_that_see_it(position, weights):
    """Under causal attention an adapter at position p changes rows p.. and leaves rows < p
    exactly as the base computes them."""
    spec, _ = tiny()
    model = _model()
    ids = _ids(8, spec.vocab_size, seed=4)
    adapter_weights = torch.zeros(1, 8, SLOTS)
    adapter_weights[0, position] = torch.tensor(weights)
    base = _run(model, ids, causal_block_ids(8))
    adapted = _run(
        model, ids, causal_block_ids(8), adapter_weights=adapter_weights, adapter_bank=_bank(spec, 5)
    )
    torch.testing.assert_close(adapted[:, :position], base[:, :position], atol=0, rtol=0)
    assert (adapted[0, position] - base[0, position]).abs().max() > 1e-4


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 5),
    weights=st.lists(st.floats(-3, 3), min_size=5 * SLOTS, max_size=5 * SLOTS),
    seed=st.integers(0, 1000),
)
def test_bank_delta_is_the_per_row_mixture_of_slots(rows, weights, seed):
    """One linear: y_i = W x_i + Σ_k w_ik B_k A_k x_i, row by row."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(6, 32, generator=generator)
    linear = FrozenLinear(weight.numpy())
    x = torch.randn(1, rows, 32, generator=generator)
    a = torch.randn(32, SLOTS * RANK, generator=generator)
    b = torch.randn(SLOTS * RANK, 6, generator=generator)
    w = torch.tensor(weights[: rows * SLOTS], dtype=torch.float32).view(1, rows, SLOTS)
    got = linear(x, (a, b, w.repeat_interleave(RANK, dim=-1)))
    expected = x @ weight.T
    for k in range(SLOTS):
        delta_k = x @ a[:, k * RANK : (k + 1) * RANK] @ b[k * RANK : (k + 1) * RANK]
        expected = expected + w[..., k : k + 1] * delta_k
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_bank_shapes_are_checked():
    spec, _ = tiny()
    bank = _bank(spec, 6)
    with pytest.raises(ValueError, match="do not fit"):
        _run(
            _model(),
            _ids(4, spec.vocab_size),
            causal_block_ids(4),
            adapter_weights=torch.zeros(1, 4, 4),
            adapter_bank=bank,
        )
    with pytest.raises(ValueError, match="not one of"):
        _run(
            _model(),
            _ids(4, spec.vocab_size),
            causal_block_ids(4),
            adapter_weights=torch.zeros(1, 4, SLOTS),
            adapter_bank={"lm_head": bank["q_proj"]},
        )


# --- the static conversion LoRA -------------------------------------------------------------------


def _randomise(model: DiffusionLM, seed: int) -> None:
    """Give a fresh (identity) adapter random factors, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def test_fresh_lora_is_the_identity_and_the_only_parameters():
    spec, _ = tiny()
    model = _model()
    ids = _ids(7, spec.vocab_size)
    base = _run(model, ids, bidirectional_block_ids(7))
    params = apply_lora(model, LoraConfig(rank=4, targets=(*LINEARS, "lm_head", "embed_tokens")))
    assert {id(p) for p in model.parameters()} == {id(p) for p in params}
    assert len(params) == 2 * (spec.num_layers * len(LINEARS) + 2)
    torch.testing.assert_close(_run(model, ids, bidirectional_block_ids(7)), base, atol=0, rtol=0)


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "q4"])
def test_lora_trains_and_the_base_stays_frozen(quantized):
    """Gradients reach every LoRA factor (QLoRA through the 4-bit base too), a few Adam steps
    lower a masked-diffusion loss, and no base buffer moves."""
    spec, weights = tiny("qwen2")
    if quantized:
        weights = {k: quantize_q4(v) if k.endswith("proj.weight") else v for k, v in weights.items()}
    model = _model("qwen2", weights)
    params = apply_lora(model, LoraConfig(rank=4, alpha=8, targets=(*LINEARS, "lm_head", "embed_tokens")))
    frozen = {name: buffer.clone() for name, buffer in model.named_buffers()}
    optimizer = torch.optim.Adam(params, lr=1e-2)
    clean = _ids(12, spec.vocab_size, seed=7)
    noisy = clean.clone()
    noisy[:, 4::2] = model.mask_token_id
    positions = torch.arange(12)[None]

    def loss_fn() -> torch.Tensor:
        logits = model(noisy, positions, block_causal_block_ids(12, 4))["logits"]
        # the shift: row i predicts token i + 1
        return torch.nn.functional.cross_entropy(logits[0, :-1], clean[0, 1:])

    losses = []
    for step in range(8):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        if step == 1:  # after one step both factors carry signal (B starts at zero)
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    for name, buffer in model.named_buffers():
        assert buffer.grad is None and not buffer.requires_grad
        assert torch.equal(buffer, frozen[name]), name


def test_lora_as_bank_equals_the_static_lora():
    spec, _ = tiny("qwen3")
    model = _model("qwen3")
    apply_lora(model, LoraConfig(rank=RANK, alpha=3.0, targets=("q_proj", "k_proj", "up_proj")))
    _randomise(model, 8)
    ids = _ids(8, spec.vocab_size, seed=9)
    static = _run(model, ids, block_causal_block_ids(8, 2))
    bank = lora_as_bank(model)
    assert set(bank) == {"q_proj", "k_proj", "up_proj"}
    plain = _model("qwen3")
    via_bank = _run(
        plain, ids, block_causal_block_ids(8, 2), adapter_weights=torch.ones(1, 8, 1), adapter_bank=bank
    )
    torch.testing.assert_close(via_bank, static, atol=1e-5, rtol=1e-5)


def test_lora_deltas_merge_into_the_float_weights():
    spec, weights = tiny()
    model = _model()
    apply_lora(model, LoraConfig(rank=4, targets=("o_proj", "gate_proj", "lm_head", "embed_tokens")))
    _randomise(model, 10)
    ids = _ids(8, spec.vocab_size, seed=11)
    merged = {k: v + lora_deltas(model).get(k, 0.0) for k, v in weights.items()}
    torch.testing.assert_close(
        _run(_model(weights=merged), ids, bidirectional_block_ids(8)),
        _run(model, ids, bidirectional_block_ids(8)),
        atol=1e-4,
        rtol=1e-4,
    )


def test_lora_state_dict_round_trip_and_mismatch():
    spec, _ = tiny()
    config = LoraConfig(rank=4, targets=("q_proj", "v_proj"))
    trained = _model()
    apply_lora(trained, config)
    _randomise(trained, 12)
    state = lora_state_dict(trained)
    assert "model.layers.1.self_attn.v_proj.lora_B.weight" in state
    assert state["model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, spec.hidden_size)
    fresh = _model()
    apply_lora(fresh, LoraConfig.from_dict(config.to_dict()))
    load_lora_state_dict(fresh, state)
    ids = _ids(6, spec.vocab_size, seed=13)
    torch.testing.assert_close(
        _run(fresh, ids, causal_block_ids(6)), _run(trained, ids, causal_block_ids(6)), atol=0, rtol=0
    )
    other = _model()
    apply_lora(other, LoraConfig(rank=4, targets=("q_proj",)))
    with pytest.raises(ValueError, match="does not match"):
        load_lora_state_dict(other, state)
    with pytest.raises(ValueError, match="not among"):
        apply_lora(_model(), LoraConfig(targets=("qkv",)))


@settings(max_examples=12, deadline=None)
@given(
    rank=st.integers(1, 4),
    extra=st.integers(0, 4),
    alphas=st.tuples(st.sampled_from([1.0, 8.0, 32.0]), st.sampled_from([1.0, 8.0, 32.0])),
    seed=st.integers(0, 99),
)
def test_a_widened_adapter_is_the_same_model(rank, extra, alphas, seed):
    """A trained adapter widened to a higher rank and another alpha (linears, the head and the
    embedding, whose fresh zero factor is A) computes the same logits; its new directions are
    the fresh adapter's."""
    spec, _ = tiny()
    targets = ("q_proj", "down_proj", "lm_head", "embed_tokens")
    narrow = _model()
    apply_lora(narrow, LoraConfig(rank=rank, alpha=alphas[0], targets=targets))
    _randomise(narrow, seed)
    wide = _model()
    apply_lora(wide, LoraConfig(rank=rank + extra, alpha=alphas[1], targets=targets, seed=seed))
    fresh = lora_state_dict(wide)
    rescale = (alphas[0] / rank) / (alphas[1] / (rank + extra))
    load_lora_state_dict(wide, widened_lora_state(lora_state_dict(narrow), fresh, rescale))
    ids = _ids(6, spec.vocab_size, seed=seed)
    torch.testing.assert_close(
        _run(wide, ids, causal_block_ids(6)), _run(narrow, ids, causal_block_ids(6)), atol=1e-4, rtol=1e-4
    )
    for name, factor in lora_state_dict(wide).items():
        new = factor[rank:] if name.endswith("lora_A.weight") else factor[:, rank:]
        old = fresh[name][rank:] if name.endswith("lora_A.weight") else fresh[name][:, rank:]
        assert torch.equal(new, old), name
    if extra:  # narrowing is no warm start
        with pytest.raises(ValueError, match="does not fit"):
            widened_lora_state(fresh, lora_state_dict(narrow), 1.0)


def test_lora_init_is_seeded():
    a, b = _model(), _model()
    apply_lora(a, LoraConfig(seed=5))
    apply_lora(b, LoraConfig(seed=5))
    for (name, x), y in zip(lora_state_dict(a).items(), lora_state_dict(b).values(), strict=True):
        assert torch.equal(x, y), name
    c = _model()
    apply_lora(c, LoraConfig(seed=6))
    key = "model.layers.0.mlp.up_proj.lora_A.weight"
    assert not np.array_equal(lora_state_dict(a)[key].numpy(), lora_state_dict(c)[key].numpy())


def test_gradient_checkpointing_gives_the_same_gradients():
    spec, _ = tiny()
    ids = _ids(10, spec.vocab_size, seed=14)
    grads = []
    for checkpointing in (False, True):
        model = _model()
        apply_lora(model, LoraConfig(rank=2, targets=("q_proj", "up_proj")))
        _randomise(model, 15)
        model.gradient_checkpointing = checkpointing
        logits = model(ids, torch.arange(10)[None], block_causal_block_ids(10, 4))["logits"]
        logits.square().mean().backward()
        grads.append([p.grad.clone() for p in lora_parameters(model)])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain)


def test_lora_factors_are_the_graphs_static_delta():
    spec, weights = tiny()
    model = _model()
    apply_lora(model, LoraConfig(rank=3, alpha=5.0, targets=("k_proj", "lm_head", "embed_tokens")))
    _randomise(model, 16)
    factors = lora_factors(model)
    assert set(factors) == {
        linear_weight(0, "k_proj"),
        linear_weight(1, "k_proj"),
        LM_HEAD,
        EMBED,
    }
    deltas = lora_deltas(model)
    for name, (a, b) in factors.items():
        assert a.shape[0] == 3 and b.shape[1] == 3
        merged = (b @ a).T if name == EMBED else b @ a  # the embedding's delta is [vocab, hidden]
        np.testing.assert_allclose(merged, deltas[name], atol=1e-6)
