"""Run an iterator in a background thread, a few items ahead: decoding overlaps the work on what it decoded.

FFmpeg decodes and numpy/onnxruntime compute without holding the GIL, so on two cores a decoder thread
and the preprocessing + model thread run at once; the queue's depth bounds the memory this costs (a few
decoded frames). Errors raised by the iterator are raised to the consumer, in order; a consumer that stops
early stops the producer and closes the iterator (which closes its media file) in the producer's thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
POLL_SECONDS = 0.05  # how often a blocked producer looks whether the consumer has gone
_ITEM, _ERROR, _DONE = "item", "error", "done"


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """`items`, produced by a daemon thread at most `depth` items ahead of the consumer."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(kind: str, value) -> bool:
        while not stop.is_set():
            try:
                slots.put((kind, value), timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not offer(_ITEM, item):
                    return
            offer(_DONE, None)
        except BaseException as exc:  # handed to the consumer, which raises it
            offer(_ERROR, exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="tivm-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == _ITEM:
                yield value
            elif kind == _ERROR:
                raise value
            else:
                return
    finally:
        stop.set()
        producer.join()
