"""Finished results in process memory, by content key."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable


class Memo:
    """Finished results (analyses, figures) by content key, in process memory (thread-safe, least recently used out).

    The disk cache already makes warm views cheap; this makes them instant: a page switch
    re-reads no capture and recomputes no Gram matrix when the same view was shown before.
    """

    def __init__(self, capacity: int = 128):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, object] = OrderedDict()

    def get_or_compute(self, key: tuple, compute: Callable[[], object]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()  # outside the lock: a slow analysis must not block other sessions' views
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value


MEMO = Memo()


def clear_memo() -> None:
    """Forget in-memory analyses (as a fresh server process would); the disk cache stays."""
    with MEMO._lock:
        MEMO._items.clear()
