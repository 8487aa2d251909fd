"""The per-worker connection budget shared by every tenant pool.

Per-tenant pools alone bound connections per tenant, not per worker: 500 tenants x a pool
of 2 is 1000 server connections, and PostgreSQL answers "too many clients". The budget
caps the connections a worker holds open to tenant roles, whatever the tenant count:

- a slot is taken before a connection is opened (inside the pool's creator, so every
  connect and reconnect goes through it) and given back when that connection is closed,
  by whichever path closes it;
- when no slot is free, idle (checked-in) connections of tenant pools are closed to make
  room, least recently returned first, before anyone waits;
- when every slot is held by a busy connection, the caller waits up to ``timeout`` seconds
  and then gets ``CapacityExhausted`` (503 with Retry-After).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

from sqlalchemy import pool as sa_pool
from sqlalchemy.util import queue as sa_queue

from app.tenancy.errors import CapacityExhausted
from app.tenancy.serving.forks import reset_in_child
from app.tenancy.serving.observer import Observer

__all__ = ["BudgetedQueuePool", "ConnectionBudget"]

logger = logging.getLogger(__name__)

_RECHECK = 0.25
"""Longest wait between two looks for connections closed without telling the budget."""

_SERVER_EXIT_WAIT = 2.0
"""Longest wait for a closed connection's backend to exit before its slot is given back."""

_Candidate = tuple[int, "weakref.ref[BudgetedQueuePool]", int]
"""A pool that may hold idle connections: its key, a weak reference, its idle mark."""


class ConnectionBudget:
    """At most ``limit`` open tenant connections in this process. Thread safe.

    A slot is *reserved* while its connection is being opened, *open* once the pool's
    creator returned it, and *closing* from the moment the pool starts closing it until
    the server has closed its end (the backend has then given up its server slot);
    ``in_use`` counts all three. Every way a pool closes a connection (close,
    invalidation, disposal, detached close) ends in ``Pool._close_connection``, which
    ``BudgetedQueuePool`` overrides to release the slot. As a safety net, an open slot
    whose DB-API connection turns out closed or garbage collected is released too
    (``_reclaim_locked``). So the count never drops below what the server holds for us,
    and never stays above it for longer than one look.

    ``self._cond`` (one Condition) guards the slots, the idle hints and the counters. It
    is held for dict operations only: connecting and closing happen outside it, and the
    only calls made under it are to the observer.
    """

    def __init__(
        self,
        limit: int,
        *,
        timeout: float,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"the connection budget must be at least 1, got {limit}")
        self.limit = limit
        self.timeout = timeout
        self._observer = observer or Observer()
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._reserved = 0
        # id(DB-API connection) -> weak reference to it: the open slots, and those whose
        # connection is being closed (the slot is held until the server let go of it).
        self._open: dict[int, weakref.ref[Any]] = {}
        self._closing: dict[int, weakref.ref[Any]] = {}
        # Pools that returned a connection lately, least recently first: where to look for
        # idle connections to close. Hints only; a pool listed may have none left.
        self._idle: OrderedDict[int, weakref.ref[BudgetedQueuePool]] = OrderedDict()
        self._idle_marks: dict[int, int] = {}
        # Counters, written under the lock: CapacityExhausted raised, idle connections
        # closed to make room, slots found closed behind the pool's back, highest in_use.
        self.exhausted = 0
        self.closed_to_make_room = 0
        self.reclaimed = 0
        self.peak = 0

        class Bound(BudgetedQueuePool):
            pass

        Bound.budget = self
        # The QueuePool class for ``create_engine(poolclass=...)``, bound to this budget.
        self.pool_class: type[BudgetedQueuePool] = Bound
        reset_in_child(self)

    @property
    def in_use(self) -> int:
        """Slots taken: connections open, being opened or being closed."""
        with self._cond:
            return self._used_locked()

    def acquire(self) -> None:
        """Take a slot for a connection about to be opened; ``bind`` or ``cancel`` follows.

        Makes room by closing idle connections when the budget is full; waits for a busy
        one to be released otherwise. Raises CapacityExhausted after ``timeout`` seconds.
        """
        started = self._clock()
        deadline = started + self.timeout
        while True:
            with self._cond:
                if self._take_locked():
                    break
                candidates = self._idle_candidates_locked()
            made_room = bool(candidates) and self._make_room(candidates)
            with self._cond:
                if self._take_locked():
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    self.exhausted += 1
                    raise CapacityExhausted(
                        f"all {self.limit} tenant connections of this worker are busy",
                        retry_after=max(1, math.ceil(self.timeout)),
                    )
                if not made_room:
                    # Woken by a release or a newly idle connection; the slice bounds how
                    # long a connection closed behind the pool's back goes unnoticed.
                    self._cond.wait(min(remaining, _RECHECK))
        self._observer.budget_wait(self._clock() - started)

    def bind(self, connection: Any) -> None:
        """The reserved slot now belongs to ``connection``, until it is closed."""
        with self._cond:
            self._reserved -= 1
            self._open[id(connection)] = weakref.ref(connection)
            self._report_locked()

    def cancel(self) -> None:
        """Give back a reserved slot whose connection could not be opened."""
        with self._cond:
            self._reserved -= 1
            self._report_locked()
            self._cond.notify()

    def closing(self, connection: Any) -> None:
        """``connection`` is about to be closed: keep its slot until ``release``.

        Without this, ``_reclaim_locked`` would see it closed and give the slot back while
        the server still holds the backend.
        """
        with self._cond:
            ref = self._open.pop(id(connection), None)
            if ref is not None and ref() is connection:
                self._closing[id(connection)] = ref

    def release(self, connection: Any) -> None:
        """Give back ``connection``'s slot; idempotent, ignores connections it never saw."""
        with self._cond:
            for slots in (self._closing, self._open):
                ref = slots.get(id(connection))
                if ref is not None and ref() is connection:
                    del slots[id(connection)]
                    self._report_locked()
                    self._cond.notify()
                    return

    def note_idle(self, pool: BudgetedQueuePool) -> None:
        """``pool`` just got a connection back: it is now the last place to make room in."""
        key = id(pool)
        with self._cond:
            if key not in self._idle:
                self._idle[key] = weakref.ref(pool)
            else:
                self._idle.move_to_end(key)
            self._idle_marks[key] = self._idle_marks.get(key, 0) + 1
            self._cond.notify()

    def _used_locked(self) -> int:
        return self._reserved + len(self._open) + len(self._closing)

    def _take_locked(self) -> bool:
        if self._used_locked() >= self.limit:
            self._reclaim_locked()
            if self._used_locked() >= self.limit:
                return False
        self._reserved += 1
        self.peak = max(self.peak, self._used_locked())
        self._report_locked()
        return True

    def _reclaim_locked(self) -> int:
        gone = [key for key, ref in self._open.items() if _closed(ref())]
        for key in gone:
            del self._open[key]
        if gone:
            self.reclaimed += len(gone)
            self._report_locked()
        return len(gone)

    def _idle_candidates_locked(self) -> list[_Candidate]:
        return [(key, ref, self._idle_marks.get(key, 0)) for key, ref in self._idle.items()]

    def _make_room(self, candidates: list[_Candidate]) -> bool:
        """Close one idle connection, least recently returned pool first; True if one was."""
        for key, ref, mark in candidates:
            pool = ref()
            if pool is not None and pool.close_idle_connection():
                with self._cond:
                    self.closed_to_make_room += 1
                return True
            with self._cond:
                # Forget the pool unless it got a connection back meanwhile.
                if self._idle_marks.get(key, 0) == mark and key in self._idle:
                    del self._idle[key]
                    self._idle_marks.pop(key, None)
        return False

    def _report_locked(self) -> None:
        self._observer.budget_in_use(self._used_locked())

    def _reset_after_fork(self) -> None:
        """In a forked child: the connections counted are the parent's."""
        self._cond = threading.Condition(threading.Lock())
        self._reserved = 0
        self._open = {}
        self._closing = {}
        self._idle = OrderedDict()
        self._idle_marks = {}


def _closed(connection: Any) -> bool:
    return connection is None or bool(getattr(connection, "closed", False))


class BudgetedQueuePool(sa_pool.QueuePool):
    """A QueuePool whose connections each hold a slot of ``budget``.

    Use ``ConnectionBudget.pool_class``, the subclass bound to one budget, so that
    ``recreate()`` (run by ``Engine.dispose()``) builds a pool on the same budget.

    Relies on three QueuePool internals of the pinned SQLAlchemy (2.1), covered by tests:
    ``_close_connection`` is the one place a pool closes a DB-API connection,
    ``_do_return_conn`` is where a checked-in record goes back into the queue ``_pool``,
    and ``_dec_overflow`` is how the pool forgets a record it discarded.
    """

    budget: ClassVar[ConnectionBudget]

    def _should_wrap_creator(self, creator: Any) -> Any:
        invoke = super()._should_wrap_creator(creator)
        budget = self.budget

        def connect_within_budget(record: Any) -> Any:
            budget.acquire()
            try:
                connection = invoke(record)
            except BaseException:
                budget.cancel()
                raise
            budget.bind(connection)
            return connection

        return connect_within_budget

    def _close_connection(self, connection: Any, *, terminate: bool = False) -> None:
        # The server's slot outlives the client's close() until the backend has read the
        # Terminate message and exited; a new connection opened in between would briefly
        # make one too many. So the slot is given back once the server closed its end.
        watch = _dup_socket(connection)
        self.budget.closing(connection)
        try:
            super()._close_connection(connection, terminate=terminate)
        finally:
            if watch is not None:
                _await_server_close(watch, _SERVER_EXIT_WAIT)
            self.budget.release(connection)

    def _do_return_conn(self, record: sa_pool.ConnectionPoolEntry) -> None:
        super()._do_return_conn(record)
        if record.dbapi_connection is not None:
            self.budget.note_idle(self)

    def close_idle_connection(self) -> bool:
        """Close one checked-in connection of this pool; False if it has none.

        The record is taken out of the queue first, so no other thread can check it out
        while it is closed; it is then discarded as QueuePool discards an overflow record.
        """
        while True:
            try:
                record = self._pool.get(False)
            except sa_queue.Empty:
                return False
            had_connection = record.dbapi_connection is not None
            try:
                record.close()
            finally:
                self._dec_overflow()
            if had_connection:
                return True


def _dup_socket(connection: Any) -> socket.socket | None:
    """A second handle on the connection's socket, which close() leaves open; or None."""
    try:
        fd = connection.fileno()
    except Exception:  # closed already, or a DB-API connection without a socket (SQLite)
        return None
    if not isinstance(fd, int) or fd < 0:
        return None
    try:
        return socket.socket(fileno=os.dup(fd))
    except OSError:
        return None


def _await_server_close(watch: socket.socket, timeout: float) -> bool:
    """Wait until the server closes its end (EOF); True if it did within ``timeout``.

    The backend closes its socket only after giving up its process slot (PostgreSQL
    runs the shared-memory exit callbacks before the on-exit ones that close the socket,
    and the process exit closes it at the latest), so EOF means the slot is free.
    """
    deadline = time.monotonic() + timeout
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            watch.settimeout(remaining)
            if not watch.recv(4096):
                return True
        return False
    except OSError:  # reset by the peer (gone already), or timed out
        return False
    finally:
        with contextlib.suppress(OSError):
            watch.close()
