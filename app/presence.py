"""Who was present lately: the memory both fair shares (gunicorn's and the app's) keep.

A requester counts as present for ``window`` seconds after its last request ended, so a
tenant between two requests keeps its claim on the threads a noisy one may not take.
Bounded: entries older than the window are dropped as time passes. Not thread safe: each
user holds its own lock, or runs on one thread.

Imports nothing (gunicorn.conf.py loads it by path in the master, for app/fair_dispatch.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["PRESENCE", "Presence"]

PRESENCE = 1.0
"""Seconds a requester counts as present after its last request ended."""


class Presence:
    """The requesters seen within ``window`` seconds, oldest first."""

    def __init__(
        self, window: float = PRESENCE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = window
        self._clock = clock
        self._seen: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        """Requesters remembered (for tests of the bound)."""
        return len(self._seen)

    def saw(self, key: Hashable) -> None:
        """``key``'s request ended (or began) now."""
        self._seen[key] = self._clock()
        self._seen.move_to_end(key)

    def others_than(self, key: Hashable) -> bool:
        """Whether anyone but ``key`` was seen within the window."""
        horizon = self._clock() - self._window
        while self._seen:
            oldest, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon:
                break
            del self._seen[oldest]
        return len(self._seen) - (key in self._seen) > 0
