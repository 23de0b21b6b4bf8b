import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.schedules import SCHEDULES, make_schedule, unmask_counts
from ruvdllm.errors import RuvdllmError

NAMES = sorted(SCHEDULES)
ts = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@pytest.mark.parametrize("name", NAMES)
def test_endpoints(name):
    schedule = make_schedule(name)
    assert schedule.masked(0.0) == pytest.approx(0.0, abs=1e-12)
    assert schedule.masked(1.0) == pytest.approx(1.0, abs=1e-12)


@given(name=st.sampled_from(NAMES), a=ts, b=ts)
def test_monotone(name, a, b):
    schedule = make_schedule(name)
    low, high = min(a, b), max(a, b)
    assert schedule.masked(low) <= schedule.masked(high) + 1e-12
    assert 0.0 <= schedule.masked(low) <= 1.0


@given(
    name=st.sampled_from(NAMES),
    length=st.integers(1, 300),
    data=st.data(),
)
def test_counts_sum_to_length_and_commit_every_step(name, length, data):
    steps = data.draw(st.integers(1, length))
    counts = unmask_counts(length, steps, make_schedule(name))
    assert len(counts) == steps
    assert sum(counts) == length
    assert min(counts) >= 1


def test_linear_counts_are_even():
    assert unmask_counts(8, 4, make_schedule("linear")) == [2, 2, 2, 2]
    assert unmask_counts(10, 4, make_schedule("linear")) == [3, 2, 3, 2]  # floor(10 s/4 + 0.5) differences
    assert unmask_counts(5, 5, make_schedule("cosine")) == [1, 1, 1, 1, 1]


def test_schedule_shapes():
    cosine = unmask_counts(64, 8, make_schedule("cosine"))
    square = unmask_counts(64, 8, make_schedule("polynomial"))
    root = unmask_counts(64, 8, make_schedule("polynomial", exponent=0.5))
    s_curve = unmask_counts(64, 8, make_schedule("cosine-sqr"))
    assert cosine[0] > cosine[-1]
    assert square[0] > square[-1]
    assert root[0] < root[-1]
    assert s_curve[0] < s_curve[3] and s_curve[-1] < s_curve[4]


def test_loglinear_normalises_to_linear():
    assert unmask_counts(37, 9, make_schedule("loglinear")) == unmask_counts(37, 9, make_schedule("linear"))


def test_unknown_name_and_parameter_are_user_errors():
    with pytest.raises(RuvdllmError, match="unknown"):
        make_schedule("sigmoid")
    with pytest.raises(RuvdllmError, match="bad parameters"):
        make_schedule("linear", exponent=3)
    assert make_schedule("polynomial", exponent=3.0).masked(0.5) == pytest.approx(0.125)


def test_steps_out_of_range():
    with pytest.raises(ValueError):
        unmask_counts(4, 5, make_schedule("linear"))
    with pytest.raises(ValueError):
        unmask_counts(4, 0, make_schedule("linear"))
