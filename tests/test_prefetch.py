"""Background prefetching: the same items in order, errors where they happened, nothing left running."""

from __future__ import annotations

import threading
import time

import pytest

from tivm.runtime.prefetch import prefetched


def test_items_come_in_order_and_ahead_of_the_consumer():
    produced = []

    def items():
        for i in range(20):
            produced.append(i)
            yield i

    seen = []
    for item in prefetched(items(), depth=3):
        time.sleep(0.002)
        seen.append(item)
        assert len(produced) <= len(seen) + 3 + 1  # never more than `depth` (+ the one in hand) ahead
    assert seen == list(range(20))


def test_an_error_is_raised_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise KeyError("broken at 3")

    seen = []
    with pytest.raises(KeyError, match="broken at 3"):
        for item in prefetched(items()):
            seen.append(item)
    assert seen == [1, 2]


def test_stopping_early_closes_the_iterator_and_ends_the_thread():
    closed = threading.Event()

    def items():
        try:
            for i in range(10_000):
                yield i
        finally:
            closed.set()

    before = threading.active_count()
    for item in prefetched(items(), depth=2):
        if item == 5:
            break
    assert closed.wait(2) and threading.active_count() == before


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        list(prefetched([1], depth=0))
