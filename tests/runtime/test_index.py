import numpy as np
import pytest

from runtime.index import ExactIndex, HnswIndex, HnswParams, make_index


def test_defaults_are_the_documented_ones():
    params = HnswParams()
    assert (params.m, params.ef_construction, params.ef_search) == (16, 200, 50)


def test_hnsw_agrees_with_exact_search():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    slots = rng.integers(3, 8, size=2000).tolist()
    exact, hnsw = ExactIndex(32), HnswIndex(32, capacity=16)  # capacity grows on add
    exact.add(vectors.tolist(), slots)
    hnsw.add(vectors, slots)
    assert len(hnsw) == len(exact) == 2000
    hits = 0
    for q in rng.standard_normal((50, 32)).astype(np.float32):
        want = exact.search(q.tolist(), 1)[0]
        got = hnsw.search(q, 1)[0]
        hits += got[0] == want[0] and got[1] == pytest.approx(want[1], abs=1e-4)
    assert hits >= 48  # HNSW is approximate: recall@1 >= 0.96


def test_save_load(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((100, 16)).astype(np.float32)
    index = HnswIndex(16)
    index.add(vectors, list(range(100)))
    index.save(tmp_path / "x.hnsw")
    loaded = HnswIndex.load(tmp_path / "x.hnsw", 16, list(range(100)))
    assert loaded.search(vectors[7], 2) == index.search(vectors[7], 2)
    with pytest.raises(ValueError, match="patterns"):
        HnswIndex.load(tmp_path / "x.hnsw", 16, list(range(99)))


def test_empty_and_fallback():
    assert HnswIndex(4).search([1.0, 0.0, 0.0, 0.0], 3) == []
    assert isinstance(make_index(4, exact=True), ExactIndex)
    assert isinstance(make_index(4), HnswIndex)
    exact = ExactIndex(2)
    exact.add([[1.0, 0.0], [0.0, 1.0]], [3, 4])
    assert exact.search([2.0, 0.1], 2)[0][0] == 3
    with pytest.raises(ValueError, match="dimension"):
        exact.add([[1.0]], [3])
