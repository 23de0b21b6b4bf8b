"""The SQLite writers' queue: one turn at a time, granted in arrival order, never lost."""

from __future__ import annotations

import threading
import time

import pytest

from federation_hub.storage.writer_queue import WriterQueue


def test_turns_are_exclusive_and_granted_in_arrival_order():
    queue, order, inside = WriterQueue(), [], []
    first_in = threading.Event()

    def writer(i: int) -> None:
        with queue.turn():
            inside.append(i)
            assert len(inside) == 1, "two writers at once"
            order.append(i)
            if i == 0:
                first_in.set()
                time.sleep(0.2)  # the others queue up meanwhile, in the order they start
            inside.pop()

    threads = [threading.Thread(target=writer, args=(0,))]
    threads[0].start()
    first_in.wait()
    for i in range(1, 8):
        threads.append(threading.Thread(target=writer, args=(i,)))
        threads[-1].start()
        time.sleep(0.01)  # arrival order = start order
    for thread in threads:
        thread.join(timeout=10)
    assert order == list(range(8))


def test_a_failed_writer_passes_its_turn_on():
    queue = WriterQueue()
    with pytest.raises(ValueError):
        with queue.turn():
            raise ValueError("the transaction failed")
    done = threading.Event()

    def writer() -> None:
        with queue.turn():
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert done.wait(timeout=5)
    thread.join()


def test_a_write_inside_a_write_on_one_thread_is_an_error_not_a_hang():
    queue = WriterQueue()
    with queue.turn():
        with pytest.raises(RuntimeError, match="inside a write transaction"):
            with queue.turn():
                pass
    with queue.turn():  # the outer turn was released normally
        pass


def test_many_writers_under_contention_all_get_a_turn():
    """A read-modify-write with a thread switch inside: any two writers at once lose a count."""
    queue, count = WriterQueue(), [0]

    def writer() -> None:
        for _ in range(200):
            with queue.turn():
                seen = count[0]
                time.sleep(0)
                count[0] = seen + 1

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert count[0] == 1600
