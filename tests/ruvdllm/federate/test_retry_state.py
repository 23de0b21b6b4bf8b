"""Backoff after failures, kept across runs."""

from hypothesis import given
from hypothesis import strategies as st

from ruvdllm.federate.retry_state import RetryState, backoff_s


@given(st.integers(1, 200), st.floats(0.1, 1e3), st.floats(1e3, 1e6))
def test_the_wait_doubles_per_failure_up_to_the_most(failures, first, most):
    wait = backoff_s(failures, first, most)
    assert first <= wait <= most
    assert backoff_s(failures + 1, first, most) == min(most, 2 * wait) or wait == most


def test_failures_are_kept_and_a_success_clears_them(tmp_path):
    state = RetryState.load(tmp_path / "state.json")
    assert state.due_in("send:public", 0.0) == 0.0
    assert state.failed("send:public", "hub down", 100.0, 60.0, 3600.0) == 60.0
    state.contributed.add(7)
    state.save()
    again = RetryState.load(tmp_path / "state.json")
    assert again.due_in("send:public", 130.0) == 30.0 and again.reason("send:public") == "hub down"
    assert again.failed("send:public", "still down", 160.0, 60.0, 3600.0) == 120.0
    again.succeeded("send:public")
    assert again.due_in("send:public", 160.0) == 0.0 and again.contributed == {7}


def test_an_unreadable_file_counts_as_no_failures(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    state = RetryState.load(tmp_path / "state.json")
    assert state.tasks == {} and state.contributed == set()
