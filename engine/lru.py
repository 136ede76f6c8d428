"""A small thread-safe least-recently-used cache, for the engine's memoised models, SAEs,
codes and steering vectors (jobs run on the engine thread; views may read from the GUI)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class LockedLRU:
    """At most ``size`` entries; ``get`` marks an entry recently used, ``put`` drops the oldest."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        """The value under ``key`` (now the most recent), or None."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key`` as the most recent entry."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
