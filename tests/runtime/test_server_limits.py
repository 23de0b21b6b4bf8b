"""runtime/server/limits.py: admission runs `slots` at once in arrival order, queues up to
`queue_size`, refuses the rest with 429 + Retry-After, and gives every place back on every path
(done, abandoned while queued, cancelled while waiting); once closed (the server is stopping) the
queued and every later request get 503 at once. The body limit is exercised over HTTP in
test_server_errors.py."""

from __future__ import annotations

import asyncio

import pytest

from runtime.server.errors import ApiError
from runtime.server.limits import MAX_RETRY_AFTER_S, Admission, retry_after_s


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_full_queue_is_refused_with_retry_after():
    async def scenario():
        admission = Admission(slots=1, queue_size=1)
        first, second = admission.reserve(), admission.reserve()
        with pytest.raises(ApiError) as refused:
            admission.reserve()
        assert refused.value.status == 429 and refused.value.code == "queue_full"
        assert int(refused.value.headers["Retry-After"]) >= 1
        first.release()
        third = admission.reserve()  # a place came free
        second.release(), third.release()
        assert admission.admitted == 0

    run(scenario())


def test_slots_are_given_in_arrival_order():
    async def scenario():
        admission = Admission(slots=1, queue_size=8)
        order: list[int] = []

        async def job(i: int):
            async with admission.reserve():
                order.append(i)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(job(i) for i in range(8)))
        assert order == list(range(8))
        assert admission.admitted == 0

    run(scenario())


def test_at_most_slots_run_at_once():
    async def scenario():
        admission = Admission(slots=3, queue_size=20)
        running = peak = 0

        async def job():
            nonlocal running, peak
            async with admission.reserve():
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.002)
                running -= 1

        await asyncio.gather(*(job() for _ in range(20)))
        assert peak == 3

    run(scenario())


def test_abandoning_a_queued_ticket_frees_its_place_but_not_a_running_slot():
    async def scenario():
        admission = Admission(slots=1, queue_size=1)
        running = admission.reserve()
        await running.run_slot()
        queued = admission.reserve()
        running.abandon()  # holds a slot: its holder releases it when the run ends
        assert admission.admitted == 2
        queued.abandon()
        assert admission.admitted == 1 and admission.waiting == 0
        running.release()
        running.release()  # idempotent
        assert admission.admitted == 0

    run(scenario())


def test_cancelling_a_waiting_request_leaks_nothing():
    async def scenario():
        admission = Admission(slots=1, queue_size=2)
        holder = admission.reserve()
        await holder.run_slot()
        waiter = admission.reserve()
        task = asyncio.ensure_future(waiter.__aenter__())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert admission.admitted == 1  # the waiter's place is back
        holder.release()
        async with admission.reserve():  # and the slot is free for the next one
            assert admission.admitted == 1

    run(scenario())


def test_retry_after_grows_with_the_queue_and_recent_run_times():
    async def scenario():
        admission = Admission(slots=2, queue_size=10)
        for _ in range(4):
            admission._record(3.0)
        tickets = [admission.reserve() for _ in range(2)]
        assert admission.retry_after() == 2  # 3 s runs, 2 slots, nobody waiting: (3 * 1) / 2
        tickets += [admission.reserve() for _ in range(4)]
        assert admission.retry_after() == 8  # 4 waiting ahead: 3 * 5 / 2
        for ticket in tickets:
            ticket.release()

    run(scenario())


def test_retry_after_is_the_median_run_time_per_slot_times_the_queue_ahead():
    # one 70 s generation among short ones does not set the pace (their mean, 11 s, did: the
    # outside walkthrough's five 8-token requests were told to wait 11 s)
    assert retry_after_s([70.0, 0.4, 0.5, 0.3, 0.4, 0.5], waiting=0, slots=1) == 1
    assert retry_after_s([70.0, 0.4], waiting=0, slots=1) == 1  # even count: the lower middle
    assert retry_after_s([2.0, 3.0, 2.5], waiting=3, slots=2) == 5  # 2.5 s * 4 / 2
    assert retry_after_s([], waiting=0, slots=4) == 1  # nothing measured yet: one second
    assert retry_after_s([0.01], waiting=0, slots=8) == 1  # whole seconds, at least one
    # the `openai` client ignores a Retry-After over 60 s (and retries at once instead)
    assert retry_after_s([30.0], waiting=63, slots=1) == MAX_RETRY_AFTER_S


def test_closing_answers_the_queued_and_later_requests_503_and_lets_running_ones_finish():
    async def scenario():
        admission = Admission(slots=1, queue_size=4)
        running = admission.reserve()
        await running.run_slot()
        queued = [admission.reserve() for _ in range(2)]
        waits = [asyncio.ensure_future(ticket.__aenter__()) for ticket in queued]
        await asyncio.sleep(0)
        admission.close()
        for wait in waits:
            with pytest.raises(ApiError) as refused:
                await wait  # at once, not when the running one ends
            assert (refused.value.status, refused.value.code) == (503, "server_shutting_down")
        with pytest.raises(ApiError) as late:
            admission.reserve()
        assert late.value.status == 503 and late.value.code == "server_shutting_down"
        assert admission.admitted == 1  # the queued ones' places are back; the running one runs on
        running.release()
        assert admission.admitted == 0

    run(scenario())


def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_passes_on():
    async def scenario():
        admission = Admission(slots=1, queue_size=4)
        holder = admission.reserve()
        await holder.run_slot()
        first, second = admission.reserve(), admission.reserve()
        first_wait = asyncio.ensure_future(first.__aenter__())
        second_wait = asyncio.ensure_future(second.__aenter__())
        await asyncio.sleep(0)
        holder.release()  # the slot goes to `first`, which is cancelled before it resumes
        first_wait.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first_wait
        await asyncio.wait_for(second_wait, 1)  # so `second` runs
        await second.__aexit__()
        assert admission.admitted == 0

    run(scenario())


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        Admission(slots=0, queue_size=1)
    with pytest.raises(ValueError):
        Admission(slots=1, queue_size=-1)
