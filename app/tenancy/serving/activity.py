"""What each tenant did in this worker lately: requests in flight, recent answers, logins.

The facts an operator asks about one tenant (``GET /v1/admin/tenants/<id>/stats``) and the
busiest tenants (``/metrics``' top slots) are kept here, per worker and in memory, never
as a metric label: a label per tenant would be a series per tenant in Prometheus.

Recent counts are kept in two windows of ``window`` seconds each, aligned on the
system-wide monotonic clock (so every worker's windows start together): the current one
and the one before. "Recent" is both together, 1 to 2 windows back.

Cost per tenant request: three short critical sections on one lock (``started`` once the
tenant authenticated, ``session_opened`` with its connection, ``finished``), a dict
lookup and a few integer additions each; no I/O, no allocation once a tenant has an entry.

Bounded: an entry per tenant that authenticated in this worker within ``retention``
seconds, at most ``max_entries`` (least recently active dropped first, never one with
requests in flight); only authenticated tenants get one, so unknown ids cannot fill it.
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEDICATED", "SHARED", "ActivitySnapshot", "RecentCounts", "TenantActivity"]

DEDICATED = "dedicated"
SHARED = "shared"
WINDOW = 60.0
"""Seconds of one counting window."""
RETENTION = 3600.0
"""Seconds an entry with no request is kept (its last login and last request)."""
MAX_ENTRIES = 20_000
_PRUNE_EVERY = 30.0

Ranking = list[tuple[uuid.UUID, float]]
"""Tenants and a rate, highest first."""


@dataclass
class RecentCounts:
    """Answers and waits of one tenant in one worker over a span of time."""

    requests: int = 0
    client_errors: int = 0
    server_errors: int = 0
    dedicated: int = 0
    shared: int = 0
    pool_wait_seconds: float = 0.0

    def add(self, other: RecentCounts) -> RecentCounts:
        return RecentCounts(
            self.requests + other.requests,
            self.client_errors + other.client_errors,
            self.server_errors + other.server_errors,
            self.dedicated + other.dedicated,
            self.shared + other.shared,
            self.pool_wait_seconds + other.pool_wait_seconds,
        )


@dataclass(frozen=True)
class ActivitySnapshot:
    """One tenant's activity in this worker, as of one moment (wall-clock times)."""

    in_flight: int
    shared_in_use: int
    last_request_at: float | None
    last_login_at: float | None
    recent_since: float
    recent: RecentCounts


class _Entry:
    __slots__ = (
        "current",
        "epoch",
        "in_flight",
        "last_login",
        "last_request",
        "previous",
        "seen",
        "shared_in_use",
    )

    def __init__(self, epoch: int, now: float) -> None:
        self.epoch = epoch
        self.current = RecentCounts()
        self.previous = RecentCounts()
        self.in_flight = 0
        self.shared_in_use = 0
        self.last_request: float | None = None
        self.last_login: float | None = None
        self.seen = now

    def roll(self, epoch: int) -> None:
        """Move the windows on to ``epoch``."""
        if epoch != self.epoch:
            self.previous = self.current if epoch == self.epoch + 1 else RecentCounts()
            self.current = RecentCounts()
            self.epoch = epoch


class TenantActivity:
    """Per-tenant activity of one worker. Thread safe.

    ``self._lock`` guards the entries (an OrderedDict in least-recently-active order);
    held for dict operations and counter updates only.
    """

    def __init__(
        self,
        *,
        window: float = WINDOW,
        retention: float = RETENTION,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self._retention = retention
        self._max_entries = max_entries
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._entries: OrderedDict[uuid.UUID, _Entry] = OrderedDict()
        self._next_prune = clock() + _PRUNE_EVERY

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def started(self, tenant_id: uuid.UUID) -> None:
        """An authenticated request of the tenant is being served."""
        now = self._clock()
        wall = self._wall()
        with self._lock:
            entry = self._entry_locked(tenant_id, now)
            entry.in_flight += 1
            entry.last_request = wall
            if now >= self._next_prune:
                self._prune_locked(now)

    def session_opened(
        self, tenant_id: uuid.UUID, way: str, waited: float, *, opened: bool = True
    ) -> None:
        """The request waited ``waited`` s for its connection and got one (``opened``) or not.

        ``way``: dedicated (its own engine) or shared (a gateway connection).
        """
        now = self._clock()
        with self._lock:
            entry = self._entry_locked(tenant_id, now)
            entry.current.pool_wait_seconds += waited
            if not opened:
                return
            if way == SHARED:
                entry.current.shared += 1
                entry.shared_in_use += 1
            else:
                entry.current.dedicated += 1

    def finished(self, tenant_id: uuid.UUID, status: int | None, way: str | None) -> None:
        """The request ended with ``status`` (None: no answer was made), on ``way``."""
        now = self._clock()
        with self._lock:
            entry = self._entry_locked(tenant_id, now)
            entry.in_flight = max(0, entry.in_flight - 1)
            if way == SHARED:
                entry.shared_in_use = max(0, entry.shared_in_use - 1)
            entry.current.requests += 1
            if status is None or status >= 500:
                entry.current.server_errors += 1
            elif status >= 400:
                entry.current.client_errors += 1

    def logged_in(self, tenant_id: uuid.UUID) -> None:
        """A new connection logged in as the tenant's role."""
        now = self._clock()
        wall = self._wall()
        with self._lock:
            self._entry_locked(tenant_id, now).last_login = wall

    def snapshot(self, tenant_id: uuid.UUID) -> ActivitySnapshot:
        """The tenant's activity in this worker now (zeros if it has none)."""
        now = self._clock()
        epoch = self._epoch(now)
        with self._lock:
            entry = self._entries.get(tenant_id)
            if entry is not None:
                entry.roll(epoch)
                recent = entry.previous.add(entry.current)
                in_flight, shared = entry.in_flight, entry.shared_in_use
                last_request, last_login = entry.last_request, entry.last_login
            else:
                recent, in_flight, shared = RecentCounts(), 0, 0
                last_request = last_login = None
        since = self._wall() - (now - (epoch - 1) * self.window)
        return ActivitySnapshot(in_flight, shared, last_request, last_login, since, recent)

    def top(self, count: int) -> tuple[Ranking, Ranking]:
        """The ``count`` busiest tenants by requests, and by pool wait, per second.

        Rates over the previous window and the current one so far.
        """
        now = self._clock()
        epoch = self._epoch(now)
        span = self.window + (now - epoch * self.window)
        requests: Ranking = []
        waits: Ranking = []
        with self._lock:
            for tenant_id, entry in self._entries.items():
                entry.roll(epoch)
                recent = entry.previous.add(entry.current)
                if recent.requests:
                    requests.append((tenant_id, recent.requests / span))
                if recent.pool_wait_seconds > 0:
                    waits.append((tenant_id, recent.pool_wait_seconds / span))
        return (
            heapq.nlargest(count, requests, key=lambda item: item[1]),
            heapq.nlargest(count, waits, key=lambda item: item[1]),
        )

    def prune(self) -> int:
        """Drop entries idle longer than the retention, and the oldest over the cap."""
        with self._lock:
            return self._prune_locked(self._clock())

    def _epoch(self, now: float) -> int:
        return int(now // self.window)

    def _entry_locked(self, tenant_id: uuid.UUID, now: float) -> _Entry:
        entry = self._entries.get(tenant_id)
        if entry is None:
            entry = self._entries[tenant_id] = _Entry(self._epoch(now), now)
        else:
            entry.roll(self._epoch(now))
            entry.seen = now
            self._entries.move_to_end(tenant_id)
        return entry

    def _prune_locked(self, now: float) -> int:
        self._next_prune = now + _PRUNE_EVERY
        dropped: list[uuid.UUID] = []
        excess = len(self._entries) - self._max_entries
        for tenant_id, entry in self._entries.items():  # least recently active first
            if entry.in_flight:
                continue
            if now - entry.seen > self._retention or len(dropped) < excess:
                dropped.append(tenant_id)
            elif excess <= len(dropped):
                break  # every later entry is more recent still
        for tenant_id in dropped:
            del self._entries[tenant_id]
        return len(dropped)
