from hypothesis import given, settings
from hypothesis import strategies as st

from federation_hub.gossip.vv import contiguous, dominates, merge, missing, union, version_vector

origins = st.sampled_from(["a", "b", "c"])
entries = st.dictionaries(
    st.tuples(origins, st.integers(1, 6)), st.sampled_from(["d1", "d2", "d3"]), max_size=12
)
vvs = st.dictionaries(origins, st.integers(0, 10), max_size=3)


@settings(max_examples=200, deadline=None)
@given(entries, entries, entries)
def test_union_is_idempotent_commutative_associative(x, y, z):
    assert union(x, x) == x
    assert union(x, y) == union(y, x)
    assert union(union(x, y), z) == union(x, union(y, z))


@settings(max_examples=200, deadline=None)
@given(vvs, vvs, vvs)
def test_vv_merge_is_a_join(x, y, z):
    assert merge(x, x) == {k: v for k, v in x.items()}
    assert merge(x, y) == merge(y, x)
    assert merge(merge(x, y), z) == merge(x, merge(y, z))
    assert dominates(merge(x, y), x) and dominates(merge(x, y), y)


# what real hubs hold: a release's content is fixed at its origin, so its digest is a function of its key
consistent = st.sets(st.tuples(origins, st.integers(1, 6)), max_size=12).map(
    lambda keys: {k: f"{k[0]}{k[1]}" for k in keys}
)


@settings(max_examples=200, deadline=None)
@given(consistent, consistent)
def test_exchanging_missing_entries_converges(x, y):
    held = lambda e: {o: [s for (o2, s) in e if o2 == o] for o in {o for o, _ in e}}  # noqa: E731
    # push-pull: each side sends what lies above the other's version vector
    to_y = {k: x[k] for k in missing(held(x), version_vector(held(y)))}
    to_x = {k: y[k] for k in missing(held(y), version_vector(held(x)))}
    x2, y2 = union(x, to_x), union(y, to_y)
    assert set(x2) == set(y2) == set(x) | set(y)
    assert x2 == y2


def test_contiguous():
    assert contiguous([]) == 0
    assert contiguous([1, 2, 3, 5]) == 3
    assert contiguous([2, 3]) == 0
