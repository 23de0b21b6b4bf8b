"""Feedback as a number, and a trace turned into the stored per-step summary (pure)."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.generate import generate
from runtime.learning.trajectory import Pending, feedback_value, make_feedback, trajectory_of
from runtime.settings import GenerationSettings
from runtime.talora import TaloraConfig
from ruvdllm.errors import RuvdllmError
from tests.runtime.toy_backend import ToyBackend

ratings = st.floats(1.0, 5.0)


@given(ratings, ratings)
def test_ratings_map_monotonically_onto_minus_one_to_one(a, b):
    va, vb = feedback_value("rating", a), feedback_value("rating", b)
    assert -1.0 <= va <= 1.0 and (va <= vb) == (a <= b)


def test_the_fixed_points():
    assert [feedback_value("rating", r) for r in (1, 3, 5)] == [-1.0, 0.0, 1.0]
    assert feedback_value("up") == 1.0 and feedback_value("down") == -1.0
    assert -1.0 < feedback_value("correction") < 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one"),
        ({"up": True, "down": True}, "exactly one"),
        ({"rating": 4, "correction": "x"}, "exactly one"),
        ({"rating": 0}, r"rating 0: must be in 1..5"),
        ({"rating": float("nan")}, "rating nan"),
        ({"correction": "  "}, "correction: empty"),
    ],
)
def test_bad_feedback_is_a_one_line_error(kwargs, message):
    with pytest.raises(RuvdllmError, match=message):
        make_feedback("cmpl-1", **kwargs)


def test_a_trace_becomes_step_summaries():
    backend = ToyBackend()
    settings = GenerationSettings(length=8, block_size=4)
    result = generate(backend, [1, 2, 3], settings, random.Random(0))
    talora = TaloraConfig(boundaries=(0.0, 0.5, 1.0))
    pending = Pending(
        "cmpl-1",
        0.0,
        "toy",
        None,
        [1, 2, 3],
        settings,
        result.trace,
        "",
        result.tokens,
        "length",
        1.0,
        decode=lambda ids: " ".join(map(str, ids)),
        embedding=(0.25, 0.5),
        talora=talora,
    )
    stored = trajectory_of(pending)
    assert stored.prompt == "1 2 3" and stored.embedding == [0.25, 0.5] and stored.patterns == []
    assert sum(s["committed"] for s in stored.steps) == 8
    assert [s["t"] for s in stored.steps] == [e.t for e in result.trace]
    assert all(len(s["talora"]) == 2 and abs(sum(s["talora"]) - 1) < 1e-6 for s in stored.steps)
    assert all(s["entropy"] >= 0.0 and 0.0 < s["confidence"] <= 1.0 for s in stored.steps)
