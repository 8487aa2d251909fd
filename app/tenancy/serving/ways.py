"""Which way a tenant is served: its own engine (dedicated) or the shared gateway pool.

- ``dedicated``: every tenant logs in as its own role (DESIGN section 5). Fastest per
  request, but a worker holds warm connections for only as many tenants as its budget.
- ``shared``: every tenant goes through the worker's gateway pool (DESIGN section 3a): a
  fixed number of connections whatever the tenant count, no login per new tenant, a
  signed context checked by the policy on every statement.
- ``mix``: the hottest tenants of the last second get their own engine while the budget
  holds them (``dedicated_slots``), every other tenant is served shared. A tenant becomes
  hot by its request count, not by one request, so a Zipf tail never turns into a login
  storm: at most ``dedicated_slots`` new engines a second per worker.
"""

from __future__ import annotations

import enum
import heapq
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from app.tenancy.errors import CapacityExhausted, TenantUnavailable
from app.tenancy.serving.activity import DEDICATED, SHARED

__all__ = ["HOT_MIN_REQUESTS", "WINDOW", "ServingMode", "ServingWays", "either_way"]

Session = TypeVar("Session")

WINDOW = 1.0
"""Seconds over which requests are counted to find the hot tenants."""
HOT_MIN_REQUESTS = 20
"""Requests in a window below which a tenant is never worth a login of its own."""


class ServingMode(enum.StrEnum):
    DEDICATED = "dedicated"
    SHARED = "shared"
    MIX = "mix"


class ServingWays:
    """Per-worker choice of the way each tenant is served. Thread safe.

    ``self._lock`` guards the window's counts and the hot set: held for a dict increment
    per request and, once a window, to pick the top tenants. No I/O under it.
    """

    def __init__(
        self,
        mode: ServingMode,
        *,
        dedicated_slots: int = 1,
        window: float = WINDOW,
        min_requests: int = HOT_MIN_REQUESTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if dedicated_slots < 1:
            raise ValueError(f"dedicated_slots must be at least 1, got {dedicated_slots}")
        self.mode = mode
        self.dedicated_slots = dedicated_slots
        self._window = window
        self._min_requests = min_requests
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[uuid.UUID, int] = {}
        self._hot: frozenset[uuid.UUID] = frozenset()
        self._window_ends = clock() + window

    def dedicated(self, tenant_id: uuid.UUID) -> bool:
        """Whether this request of the tenant is served on its own engine; counts it."""
        if self.mode is ServingMode.DEDICATED:
            return True
        if self.mode is ServingMode.SHARED:
            return False
        now = self._clock()
        with self._lock:
            if now >= self._window_ends:
                self._roll_locked(now)
            # Bounded: only authenticated tenants reach here, and the dict is emptied
            # every window.
            self._counts[tenant_id] = self._counts.get(tenant_id, 0) + 1
            return tenant_id in self._hot

    def hot(self) -> frozenset[uuid.UUID]:
        """The tenants served on their own engines in this window (``mix``)."""
        with self._lock:
            return self._hot

    def _roll_locked(self, now: float) -> None:
        # A roll a whole window late: no request came for a window, so the closing one's
        # counts stopped partway and cannot say that a hot tenant cooled down. A hot
        # tenant among them stays hot: when the load comes back it is served on its own
        # (still warm) engine at once, not shared for a window.
        paused = now >= self._window_ends + self._window
        busiest = heapq.nlargest(
            self.dedicated_slots,
            self._counts.items(),
            key=lambda item: (item[1], item[0] in self._hot),
        )
        self._hot = frozenset(
            tenant_id
            for tenant_id, count in busiest
            if count >= self._min_requests or (paused and tenant_id in self._hot)
        )
        self._counts = {}
        self._window_ends = now + self._window


def either_way(
    dedicated: bool, mix: bool, own: Callable[[], Session], shared: Callable[[], Session]
) -> tuple[Session, str]:
    """A session the tenant's way (``own`` engine if ``dedicated``, else ``shared``), and
    that way; in ``mix``, shared also when its own engine cannot be had right now (budget
    busy, logins backing off). On a primary and on a replica alike."""
    if dedicated:
        try:
            return own(), DEDICATED
        except (CapacityExhausted, TenantUnavailable):
            if not mix:
                raise
    return shared(), SHARED
