"""Pattern usefulness: the update math (property tests), re-ranking, the file beside the bank."""

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from runtime.learning.scores import SCORES_NAME, PatternScores, ema, rerank

unit = st.floats(-1.0, 1.0)
rates = st.floats(0.001, 1.0)


@given(unit, unit, rates)
def test_ema_stays_in_range_and_moves_toward_the_value(score, value, rate):
    new = ema(score, value, rate)
    assert -1.0 <= new <= 1.0
    assert abs(new - value) <= abs(score - value) + 1e-12  # never further from the value
    assert min(score, value) - 1e-12 <= new <= max(score, value) + 1e-12


@given(unit, unit, rates, st.integers(1, 200))
def test_repeated_feedback_converges_geometrically(score, value, rate, n):
    for _ in range(n):
        score = ema(score, value, rate)
    assert abs(score - value) <= 2.0 * (1.0 - rate) ** n + 1e-9


@given(unit, unit)
def test_rate_one_takes_the_value(score, value):
    assert ema(score, value, 1.0) == value


neighbours = st.lists(
    st.tuples(st.integers(0, 40), st.integers(3, 7), st.floats(-1.0, 1.0)),
    max_size=12,
    unique_by=lambda n: n[0],
).map(lambda found: sorted(found, key=lambda n: -n[2]))


@given(neighbours, st.integers(1, 12), st.floats(0.0, 1.0), st.floats(-1.0, 0.0))
def test_without_feedback_rerank_is_the_search_order(found, k, weight, floor):
    if floor >= 0.0:
        floor = -0.5
    assert rerank(found, {}, weight, floor, k) == found[:k]


@given(neighbours, st.dictionaries(st.integers(0, 40), unit), st.integers(1, 12), st.floats(0.0, 0.5))
def test_rerank_orders_by_adjusted_similarity_and_drops_the_bad(found, usefulness, k, weight):
    out = rerank(found, usefulness, weight, -0.5, k)
    assert len(out) <= k
    assert all(usefulness.get(p, 0.0) > -0.5 for p, _, _ in out)
    assert [s for _, _, s in out] == sorted((s for _, _, s in out), reverse=True)
    for p, slot, s in out:
        original = next(n for n in found if n[0] == p)
        assert slot == original[1] and math.isclose(s, original[2] + weight * usefulness.get(p, 0.0))


def test_update_save_load_round_trip(tmp_path):
    scores = PatternScores(tmp_path / SCORES_NAME, patterns=10, rate=0.5)
    assert not scores.active()
    assert scores.update([3, 3, 4, 99, -1], 1.0) == [3, 4]  # each used pattern once; unknown ids ignored
    assert scores.update([4], -1.0) == [4]
    assert scores.usefulness == {3: 0.5, 4: -0.25} and scores.counts == {3: 1, 4: 2}
    scores.save()
    assert [p.name for p in tmp_path.iterdir()] == [SCORES_NAME]  # no temporary file left behind
    loaded = PatternScores.load(tmp_path, patterns=10)
    assert loaded.usefulness == scores.usefulness and loaded.counts == scores.counts and loaded.active()
    fewer = PatternScores.load(tmp_path, patterns=4)  # a bank with fewer patterns: ids beyond it dropped
    assert fewer.usefulness == {3: 0.5}


def test_a_save_that_fails_leaves_the_previous_file(tmp_path, monkeypatch):
    scores = PatternScores(tmp_path / SCORES_NAME, patterns=10)
    scores.update([1], 1.0)
    scores.save()
    before = (tmp_path / SCORES_NAME).read_text()
    scores.update([2], 1.0)

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("runtime.learning.scores.os.replace", crash)
    try:
        scores.save()
    except OSError:
        pass
    assert (tmp_path / SCORES_NAME).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [SCORES_NAME]


def test_an_unreadable_file_is_moved_aside(tmp_path):
    (tmp_path / SCORES_NAME).write_text("{not json")
    warnings = []
    scores = PatternScores.load(tmp_path, patterns=10, on_warning=warnings.append)
    assert not scores.active() and len(warnings) == 1 and "moved aside" in warnings[0]
    assert len(list(tmp_path.glob(f"{SCORES_NAME}.corrupt-*"))) == 1
    (tmp_path / SCORES_NAME).write_text(json.dumps({"format": 9, "scores": {}}))
    assert not PatternScores.load(tmp_path, patterns=10, on_warning=warnings.append).active()
    assert len(warnings) == 2
