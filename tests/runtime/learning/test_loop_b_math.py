"""Loop B's math alone: spherical k-means, the SPSA estimate, the MicroLoRA's place in a bank slot."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.learning.kmeans import cohesion, normalise_rows, spherical_kmeans
from runtime.learning.microlora import MicroLora, micro_name, new_micro, parse_micro_name, trained_layers
from runtime.learning.spsa import directional_derivative, rademacher, spsa_minimise, spsa_step

seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(1, 30), d=st.integers(2, 8), k=st.integers(1, 6))
def test_kmeans_labels_are_nearest_unit_centroids(seed, n, d, k):
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((n, d))
    centroids, labels = spherical_kmeans(points, k, np.random.default_rng(seed))
    assert len(centroids) == min(k, n) and labels.shape == (n,)
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0)
    cosine = normalise_rows(points) @ centroids.T
    assert np.allclose(cosine[np.arange(n), labels], cosine.max(axis=1))  # converged: each at its nearest


@settings(max_examples=30, deadline=None)
@given(seed=seeds)
def test_kmeans_finds_separated_topics_and_beats_one_centroid(seed):
    rng = np.random.default_rng(seed)
    topics = normalise_rows(rng.standard_normal((3, 16))) * 10
    points = np.concatenate([t + rng.standard_normal((8, 16)) for t in topics])
    centroids, labels = spherical_kmeans(points, 3, np.random.default_rng(seed))
    one, one_labels = spherical_kmeans(points, 1, np.random.default_rng(seed))
    assert cohesion(points, centroids, labels) >= cohesion(points, one, one_labels) - 1e-9
    # the same seed gives the same clusters
    again, again_labels = spherical_kmeans(points, 3, np.random.default_rng(seed))
    assert np.array_equal(labels, again_labels) and np.array_equal(centroids, again)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, d=st.integers(1, 40), epsilon=st.floats(1e-3, 1.0))
def test_central_difference_is_exact_for_quadratics(seed, d, epsilon):
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((d, d))
    h, c, x = m @ m.T, rng.standard_normal(d), rng.standard_normal(d)

    def f(v):
        return 0.5 * v @ h @ v + c @ v

    z = rademacher(rng, d)
    assert set(np.unique(z)) <= {-1.0, 1.0}
    expected = z @ (h @ x + c)
    assert np.isclose(
        directional_derivative(f, x, z, epsilon), expected, rtol=1e-6, atol=1e-6 * (1 + abs(expected))
    )


def test_spsa_estimate_is_unbiased_on_a_linear_loss():
    rng = np.random.default_rng(0)
    c = rng.standard_normal(12)
    estimates = []
    for _ in range(4000):
        z = rademacher(rng, 12)
        estimates.append(directional_derivative(lambda v: c @ v, np.zeros(12), z, 0.1) * z)
    assert np.allclose(np.mean(estimates, axis=0), c, atol=4 * np.linalg.norm(c) / np.sqrt(4000))


@settings(max_examples=20, deadline=None)
@given(seed=seeds, d=st.integers(2, 20))
def test_spsa_lowers_a_convex_quadratic(seed, d):
    rng = np.random.default_rng(seed)
    target = rng.standard_normal(d)

    def f(v):
        return float(np.sum((v - target) ** 2))

    theta, steps = spsa_minimise(lambda step: f, np.zeros(d), 300, rng, 0.01, 0.1)
    assert steps == 300 and f(theta) < 0.5 * f(np.zeros(d))


def test_a_non_finite_difference_leaves_the_parameters():
    theta = np.ones(3)
    new, g = spsa_step(lambda v: float("nan"), theta, np.random.default_rng(0), 0.1, 1.0)
    assert g == 0.0 and np.array_equal(new, theta)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, rank=st.integers(1, 2), bank_rank=st.integers(2, 4), last=st.integers(0, 3))
def test_a_microlora_in_its_slot_computes_the_same_delta(seed, rank, bank_rank, last):
    rng = np.random.default_rng(seed)
    targets = {"q_proj": (8, 8), "v_proj": (8, 4)}
    layers = trained_layers(3, last)
    micro = new_micro(1, 4, targets, layers, rank, rng)
    micro = micro.with_b(rng.standard_normal(micro.b_vector().size))
    factors = micro.to_bank(3, bank_rank)
    for t, (a, b) in factors.items():
        for layer in range(3):
            delta = a[layer] @ b[layer]
            if layer in layers:
                i = layers.index(layer)
                assert np.allclose(delta, micro.a[t][i] @ micro.b[t][i], atol=1e-6)
            else:
                assert not delta.any()
    flat = {t: (a.ravel().astype(np.float32), b.ravel().astype(np.float32)) for t, (a, b) in factors.items()}
    back = MicroLora.from_bank(flat, 1, 4, layers, rank, 3, bank_rank)
    assert np.array_equal(back.b_vector(), micro.b_vector())
    assert all(np.array_equal(back.a[t], micro.a[t]) for t in targets)


def test_a_new_microlora_changes_nothing_and_names_round_trip():
    micro = new_micro(0, 3, {"q_proj": (8, 8)}, (1,), 2, np.random.default_rng(0))
    assert not micro.b_vector().any()
    assert parse_micro_name(micro_name(2, 5, 17)) == (2, 5, 17)
    assert parse_micro_name("fine") is None and parse_micro_name("micro-g1-s2") is None


@settings(max_examples=50, deadline=None)
@given(ids=st.lists(st.integers(0, 10_000), min_size=1, max_size=40, unique=True))
def test_the_keep_check_uses_examples_training_never_saw(ids):
    from runtime.learning.loop_b import VALIDATION_EVERY, VALIDATION_MIN, Example, validation_split

    members = [Example(i, (1,), (2,), np.ones(4) / 2, 0) for i in ids]
    train, check = validation_split(members)
    if len(ids) < VALIDATION_MIN:  # too few to spare any: all of them, under other masks
        assert [e.feedback_id for e in train] == [e.feedback_id for e in check] == sorted(ids)
        return
    held = {e.feedback_id for e in check}
    assert len(check) == len(ids) // VALIDATION_EVERY  # one in VALIDATION_EVERY
    assert held.isdisjoint(e.feedback_id for e in train)  # never trained on
    assert sorted(held | {e.feedback_id for e in train}) == sorted(ids)  # nothing lost
    again = validation_split(list(reversed(members)))  # by id, not by arrival order
    assert [[e.feedback_id for e in part] for part in again] == [
        [e.feedback_id for e in part] for part in (train, check)
    ]


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 20), st.integers(1, 12)), min_size=1, max_size=12),
    block=st.integers(1, 8),
    prompts=st.booleans(),
)
def test_training_pairs_are_the_answers_and_the_prompts_after_their_first_block(lengths, block, prompts):
    from runtime.learning.loop_b import Example, training_pairs, validation_split

    # every example's tokens are its own (1000·i + position), so a pair shows whose text it holds
    members = [
        Example(
            i,
            tuple(range(1000 * i, 1000 * i + p)),
            tuple(range(1000 * i + 500, 1000 * i + 500 + a)),
            np.ones(4) / 2,
            0,
        )
        for i, (p, a) in enumerate(lengths)
    ]
    train, check = validation_split(members)
    pairs = training_pairs(train, block, prompts)

    assert pairs[: len(train)] == [(e.prompt, e.target) for e in train]  # the answers, as before
    windows = pairs[len(train) :]
    expected = [e for e in train if len(e.prompt) > block] if prompts else []
    assert len(windows) == len(expected)
    for (context, target), e in zip(windows, expected, strict=True):
        assert len(context) == block and target and context + target == e.prompt
    if len(check) < len(members):  # check examples kept out: none of their text trains
        unseen = {tok for e in check for tok in e.prompt + e.target}
        assert unseen.isdisjoint(tok for c, t in pairs for tok in c + t)


@settings(max_examples=50, deadline=None)
@given(
    targets=st.lists(st.integers(1, 40), min_size=1, max_size=20),
    block=st.integers(1, 16),
    batch=st.integers(1, 8),
    epochs=st.floats(0.01, 20),
    cap=st.integers(1, 500),
)
def test_epoch_steps_scale_with_the_data_up_to_the_cap(targets, block, batch, epochs, cap):
    from runtime.learning.trainer import epoch_steps

    pairs = [((1,), tuple(range(n))) for n in targets]
    steps = epoch_steps(pairs, block, batch, epochs, cap)
    blocks = sum(-(-n // block) for n in targets)
    assert 1 <= steps <= cap
    if 1 < steps < cap:  # neither bound binds: just enough steps for `epochs` passes
        assert (steps - 1) * batch < epochs * blocks <= steps * batch
    more = epoch_steps(pairs + pairs, block, batch, epochs, cap)  # twice the data: at least as many
    assert steps <= more <= cap
