import numpy as np

from federation_hub.aggregate.cluster import (
    Sketcher,
    dbscan_clusters,
    kmeans_clusters,
    largest_cluster,
    similarity_clusters,
    unit_rows,
)
from federation_hub.aggregate.lora import LoraPair

SHAPES = {"layers.0.q_proj": (24, 20), "layers.0.v_proj": (12, 20)}


def pairs_along(direction: dict[str, LoraPair], rng, noise=0.05, scale=1.0):
    return {
        n: LoraPair(
            a=p.a + noise * rng.standard_normal(p.a.shape),
            b=scale * p.b + noise * rng.standard_normal(p.b.shape),
        )
        for n, p in direction.items()
    }


def random_direction(rng):
    return {
        n: LoraPair(a=rng.standard_normal((4, i)), b=rng.standard_normal((o, 4)))
        for n, (o, i) in SHAPES.items()
    }


def test_sketch_preserves_cosine_similarity_roughly():
    rng = np.random.default_rng(0)
    d1, d2 = random_direction(rng), random_direction(rng)
    sketcher = Sketcher(SHAPES, np.random.default_rng(7), size=16)
    same = unit_rows(np.vstack([sketcher.sketch(d1), sketcher.sketch(pairs_along(d1, rng, scale=3.0))]))
    other = unit_rows(np.vstack([sketcher.sketch(d1), sketcher.sketch(d2)]))
    assert same[0] @ same[1] > 0.95  # same direction, three times the size
    assert abs(other[0] @ other[1]) < 0.6  # independent directions


def test_sketch_is_deterministic_for_a_seed():
    d = random_direction(np.random.default_rng(1))
    a = Sketcher(SHAPES, np.random.default_rng(5)).sketch(d)
    b = Sketcher(SHAPES, np.random.default_rng(5)).sketch(d)
    np.testing.assert_array_equal(a, b)


def two_camps(rng, majority=6, minority=3):
    d1, d2 = random_direction(rng), random_direction(rng)
    sketcher = Sketcher(SHAPES, np.random.default_rng(3))
    rows = [sketcher.sketch(pairs_along(d1, rng)) for _ in range(majority)]
    rows += [sketcher.sketch(pairs_along(d2, rng)) for _ in range(minority)]
    return np.vstack(rows)


def test_every_method_finds_the_majority_camp():
    rng = np.random.default_rng(2)
    features = two_camps(rng)
    expected = np.array([True] * 6 + [False] * 3)
    for labels in (
        similarity_clusters(features, 0.5),
        kmeans_clusters(features, 2, np.random.default_rng(0)),
        dbscan_clusters(features, eps=0.3, min_samples=2),
    ):
        np.testing.assert_array_equal(largest_cluster(labels), expected)


def test_largest_cluster_ignores_outliers_and_breaks_ties_low():
    np.testing.assert_array_equal(largest_cluster([-1, -1, -1, 0, 1]), [False, False, False, True, False])
    assert not largest_cluster([-1, -1]).any()
