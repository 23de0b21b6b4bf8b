"""A bank's adapters as the hub's LoRA pairs and back, and the merge of a release into an adapter."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from federation_hub.aggregate.lora import LoraPair
from runtime.artifact import Features
from runtime.banks import Bank
from ruvdllm.federate.bank_pairs import (
    adapter_in_slot,
    adapter_pairs,
    bank_factors,
    bank_shapes,
    fits,
    group_slots,
    merge_pairs,
)
from tests.federation_hub.hubs import SMALL_SHAPES
from tests.ruvdllm.federate.banks import random_factors, small_bank

seeds = st.integers(0, 2**32 - 1)


def products(pairs):
    return {name: p.product() for name, p in pairs.items()}


def test_a_bank_has_the_shapes_of_the_hub_rounds_it_fits():
    bank = small_bank(np.random.default_rng(0))
    assert bank_shapes(bank) == SMALL_SHAPES
    assert fits(bank, SMALL_SHAPES)
    other_rank = {n: {**s, "rank": 8} for n, s in SMALL_SHAPES.items()}
    assert fits(bank, other_rank)  # a release of another rank is refactorised to the bank's
    assert not fits(bank, {n: {**s, "in_features": 32} for n, s in SMALL_SHAPES.items()})
    assert not fits(bank, dict(list(SMALL_SHAPES.items())[:-1]))
    assert group_slots(bank) == {"fine": 0, "domain": 1, "coarse": 2}


@settings(max_examples=25, deadline=None)
@given(seeds)
def test_bank_to_pairs_to_bank_is_exact_and_keeps_the_delta(seed):
    bank = small_bank(np.random.default_rng(seed))
    adapter = adapter_in_slot(bank, 2)
    pairs = adapter_pairs(bank, adapter)
    # the delta the runtime applies: x @ a[i] @ b[i], i.e. W + (a b)ᵀ; the hub's B A must be that
    fan_in, fan_out = bank.targets["v_proj"]
    a = np.frombuffer(adapter.factors["v_proj"][0].tobytes(), np.float32).reshape(2, fan_in, 4)
    b = np.frombuffer(adapter.factors["v_proj"][1].tobytes(), np.float32).reshape(2, 4, fan_out)
    np.testing.assert_allclose(pairs["layers.1.v_proj"].product(), (a[1] @ b[1]).T, rtol=1e-6, atol=1e-7)
    back = bank_factors(bank, pairs)
    for target, (fa, fb) in back.items():
        assert fa.tobytes() == adapter.factors[target][0].tobytes()
        assert fb.tobytes() == adapter.factors[target][1].tobytes()


@settings(max_examples=25, deadline=None)
@given(seeds, st.floats(0.0, 1.0))
def test_merging_is_the_blend_of_the_deltas_when_it_fits_the_rank(seed, weight):
    rng = np.random.default_rng(seed)
    bank = small_bank(rng)
    shared = {t: f[0] for t, f in random_factors(bank, rng).items()}  # one A: blends stay rank r
    local = adapter_pairs(bank, bank.add_adapter("x", 3, random_factors(bank, rng, a_shared=shared)))
    theirs = adapter_pairs(bank, bank.add_adapter("y", 4, random_factors(bank, rng, a_shared=shared)))
    merged = merge_pairs(local, theirs, weight, bank.rank)
    for name, product in products(merged).items():
        expected = (1 - weight) * local[name].product() + weight * theirs[name].product()
        np.testing.assert_allclose(product, expected, atol=1e-5)
        assert merged[name].a.shape == (4, local[name].a.shape[1])


@settings(max_examples=15, deadline=None)
@given(seeds, st.floats(0.0, 1.0))
def test_merging_a_release_equal_to_the_adapter_keeps_it(seed, weight):
    bank = small_bank(np.random.default_rng(seed))
    mine = adapter_pairs(bank, adapter_in_slot(bank, 0))
    for name, product in products(merge_pairs(mine, mine, weight, bank.rank)).items():
        np.testing.assert_allclose(product, mine[name].product(), atol=1e-5)


def test_the_merged_delta_is_the_best_rank_r_approximation_of_the_blend():
    rng = np.random.default_rng(5)
    bank = small_bank(rng)
    mine = adapter_pairs(bank, adapter_in_slot(bank, 0))
    theirs = adapter_pairs(bank, adapter_in_slot(bank, 1))  # another subspace: the blend has rank 2r
    merged = merge_pairs(mine, theirs, 0.5, bank.rank)
    for name in mine:
        blend = 0.5 * mine[name].product() + 0.5 * theirs[name].product()
        u, s, vt = np.linalg.svd(blend)
        best = (u[:, :4] * s[:4]) @ vt[:4]  # Eckart–Young
        np.testing.assert_allclose(merged[name].product(), best, atol=1e-5)


def test_a_device_without_an_adapter_takes_the_release_zero_padded_to_its_rank():
    release = {
        name: LoraPair(
            a=np.ones((2, s["in_features"]), np.float32), b=np.ones((s["out_features"], 2), np.float32)
        )
        for name, s in SMALL_SHAPES.items()
    }
    merged = merge_pairs(None, release, 0.5, rank=4)
    for name, pair in merged.items():
        assert pair.a.shape == (4, SMALL_SHAPES[name]["in_features"])
        np.testing.assert_allclose(pair.product(), release[name].product(), rtol=1e-5)


def test_an_empty_bank_slot_has_no_adapter():
    bank = Bank(layers=1, hidden_size=16, rank=4, slots=5, targets={"q_proj": Features(16, 16)})
    assert adapter_in_slot(bank, 0) is None


@settings(max_examples=25, deadline=None)
@given(seed=seeds, weight=st.floats(0.1, 1.0))
def test_loop_c_at_lambda_zero_merges_as_federation_does(seed, weight):
    """Two implementations of one cut (the hub's LowRankSum, which the runtime may not import, and
    loop C's ewc_merge): blending an adapter toward a release is folding in release − adapter."""
    from runtime.learning.ewc import components, ewc_merge

    rng = np.random.default_rng(seed)
    rank, fan_in, fan_out = 4, 16, 8
    a, b = rng.standard_normal((fan_in, rank)), rng.standard_normal((rank, fan_out))
    ma, mb = rng.standard_normal((fan_in, 2)), rng.standard_normal((2, fan_out))
    local = {"x": LoraPair(a=a.T.astype(np.float32), b=b.T.astype(np.float32))}
    # the release: the adapter plus the MicroLoRA, as one pair of rank 6
    release = {
        "x": LoraPair(
            a=np.concatenate([a, ma], axis=1).T.astype(np.float32),
            b=np.concatenate([b, mb], axis=0).T.astype(np.float32),
        )
    }
    federated = merge_pairs(local, release, weight, rank)["x"].product().T  # [in, out]
    local_a, local_b = local["x"].a.T.astype(np.float64), local["x"].b.T.astype(np.float64)
    folded = ewc_merge(
        components(local_a, local_b),
        [(ma.astype(np.float32), mb.astype(np.float32))],
        np.ones(rank),
        0.0,
        rank,
        weight,
    ).delta()
    np.testing.assert_allclose(folded, federated, atol=1e-4 * max(1.0, np.abs(federated).max()))
