"""The per-worker registry of tenant engines: one dict, one lock, per-tenant creations.

Engines are created on a tenant's first request, kept while used, and disposed when idle
for ``idle_ttl`` (``reap_idle``, by the reaper thread), beyond ``max_engines`` (least
recently used first), on a tenant change event (``evict``), at worker exit
(``dispose_all``) and after a fork (in the child).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic

import sqlalchemy as sa
from sqlalchemy import orm

from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving.entry import EngineEntry, S, checked_out, close_retired_on_checkin, retire
from app.tenancy.serving.forks import reset_in_child
from app.tenancy.serving.observer import Observer

__all__ = ["Clock", "EngineEntry", "EngineFactory", "EngineRegistry", "SessionFactory"]

logger = logging.getLogger(__name__)

EngineFactory = Callable[[uuid.UUID], sa.Engine]
"""Builds a tenant's engine: decryption and first connect; may be slow and may raise."""

Clock = Callable[[], float]
"""Seconds from an arbitrary origin; ``time.monotonic`` unless a test fakes it."""

SessionFactory = Callable[[sa.Engine], orm.sessionmaker[S]]
"""Builds the sessionmaker of a newly created engine; cheap, no I/O."""


@dataclass(eq=False)
class _Creation:
    """One tenant's engine creation in progress, run by the thread that registered it."""

    # Set when the attempt is over, whatever its outcome; the other callers wait on it.
    done: threading.Event = field(default_factory=threading.Event)
    # The factory's exception: the callers that waited for this attempt re-raise it
    # rather than each calling the factory again (one broken tenant must not turn 50
    # concurrent requests into 50 sequential login attempts).
    error: BaseException | None = None
    # Set by evict() while the factory runs: what it fetched may be stale (credentials
    # rotated, tenant suspended or deleted), so the creator fetches again.
    invalidated: bool = False


_MAX_CREATE_ATTEMPTS = 3
"""Factory calls per creation while change events keep invalidating what was fetched."""
_MAX_CONNECT_ATTEMPTS = 3
"""Checkouts per ``connect`` while evictions keep retiring the engine they came from."""


class EngineRegistry(Generic[S]):
    """Per-worker map of tenant id -> engine, bounded, thread safe.

    ``self._lock`` (one ``threading.Lock``) guards ``_entries`` (an OrderedDict kept in
    least-recently-used order, so ``last_used`` grows from front to back), ``_creating``
    (tenant id -> creation in progress) and the counters. Held only for dict operations,
    timestamp writes and reading pool counters. NEVER done while holding it: network I/O,
    decryption, connecting (the engine factory), disposing an engine, logging, telling the
    observer (metrics may write files). Engines are popped under the lock and disposed
    after it is released.

    Creation runs outside ``self._lock``. The first caller for a tenant registers a
    ``_Creation`` in ``_creating`` (the per-tenant creation lock: an Event the tenant's
    other callers wait on, removed when the attempt ends) and runs the factory; the
    others wait, then read the entry again under the lock. So concurrent first requests
    of a tenant create one engine, and a slow tenant delays neither other tenants' hot
    path nor their creation. If the factory raises, the exception (the same object)
    reaches the caller that ran it and every caller waiting for that attempt (they do
    not call the factory again); nothing is cached, and the next call tries again. The
    factory's own timeouts bound the wait for it.

    Counters (for tests; metrics get the same facts through the observer; written under
    the lock): ``created``, ``evicted_by_reason`` (``idle``, ``lru``, ``event`` or the
    reason given to ``evict``, ``shutdown``, ``fork``) and ``over_capacity`` (inserts that
    left more than ``max_engines`` engines because all others had connections checked out).
    """

    def __init__(
        self,
        engine_factory: EngineFactory,
        *,
        session_factory: SessionFactory[S],
        max_engines: int,
        idle_ttl: float,
        clock: Clock = time.monotonic,
        observer: Observer | None = None,
    ) -> None:
        if max_engines < 1:
            raise ValueError(f"max_engines must be at least 1, got {max_engines}")
        if idle_ttl <= 0:
            raise ValueError(f"idle_ttl must be positive seconds, got {idle_ttl}")
        self._engine_factory = engine_factory
        self._session_factory = session_factory
        self.max_engines = max_engines
        self.idle_ttl = idle_ttl
        self._clock = clock
        self._observer = observer or Observer()
        self._lock = threading.Lock()
        self._entries: OrderedDict[uuid.UUID, EngineEntry[S]] = OrderedDict()
        self._creating: dict[uuid.UUID, _Creation] = {}
        self.created = 0
        self.evicted_by_reason: dict[str, int] = {}
        self.over_capacity = 0
        reset_in_child(self)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, tenant_id: object) -> bool:
        """Whether the tenant has an engine; does not count as a use."""
        with self._lock:
            return tenant_id in self._entries

    def pool_status(self, tenant_id: uuid.UUID) -> tuple[int, int] | None:
        """(open, in use) connections of the tenant's engine; None without one. Not a use."""
        with self._lock:
            entry = self._entries.get(tenant_id)
            if entry is None:
                return None
            in_use = checked_out(entry.engine)
            idle: Callable[[], int] | None = getattr(entry.engine.pool, "checkedin", None)
            return in_use + (0 if idle is None else idle()), in_use

    def peek(self, tenant_id: uuid.UUID) -> EngineEntry[S] | None:
        """The tenant's entry if it has one; does not count as a use."""
        with self._lock:
            return self._entries.get(tenant_id)

    def get(self, tenant_id: uuid.UUID) -> EngineEntry[S]:
        """The tenant's entry, creating its engine on first use.

        Raises whatever the engine factory or the session factory raise; nothing is
        cached then. Blocks while another thread creates this tenant's engine (the
        factory's own timeouts bound that wait), never while another tenant's is created.
        """
        while True:
            with self._lock:
                entry = self._touch_locked(tenant_id)
                if entry is not None:
                    return entry
                creation = self._creating.get(tenant_id)
                if creation is None:
                    creation = self._creating[tenant_id] = _Creation()
                    leader = True
                else:
                    leader = False
            if leader:
                return self._create(tenant_id, creation)
            creation.done.wait()
            if creation.error is not None:
                raise creation.error
            # Created: loop to read it under the lock (second check). If it was evicted
            # in the meantime, the next pass starts a new creation.

    def connect(
        self,
        tenant_id: uuid.UUID,
        *,
        failed: Callable[[BaseException], object] = lambda error: None,
    ) -> tuple[EngineEntry[S], sa.Connection]:
        """The tenant's entry and a connection checked out of its engine, which is current.

        ``get`` then ``engine.connect()`` leaves a gap in which ``evict`` can pop and
        dispose the entry: the connection would then come from a retired engine (a stale
        password, a suspended role). So the entry is checked again, under the lock, once
        the connection is out; if it was evicted meanwhile, the connection is given back
        and the current entry (or a new one) is taken instead. After that check, an evict
        only stops the connection from being pooled again (``close_retired_on_checkin``).

        Raises what ``get`` and connecting raise (``failed`` is told of the latter first:
        the factory reports its own), and TenantUnavailable if the tenant was evicted at
        every one of ``_MAX_CONNECT_ATTEMPTS`` attempts (events keep coming).
        """
        for _ in range(_MAX_CONNECT_ATTEMPTS):
            entry = self.get(tenant_id)
            try:
                connection = entry.engine.connect()
            except BaseException as error:
                failed(error)
                raise
            with self._lock:
                current = self._entries.get(tenant_id) is entry
            if current:
                return entry, connection
            connection.close()
            logger.info(
                "tenant %s was evicted while connecting; taking its engine again", tenant_id
            )
        raise TenantUnavailable(
            "the tenant keeps changing; retry", retry_after=1, code="tenant_unavailable"
        )

    def evict(self, tenant_id: uuid.UUID, reason: str = "event") -> bool:
        """Dispose the tenant's engine; True if it had one.

        A creation in progress for the tenant is told to fetch again, so an engine built
        from credentials read before the event is not cached after it.
        """
        with self._lock:
            entry = self._entries.pop(tenant_id, None)
            creation = self._creating.get(tenant_id)
            if creation is not None:
                creation.invalidated = True
            if entry is not None:
                self._count_locked(reason, 1)
        if entry is None:
            return False
        self._observer.engines_evicted(reason, 1)
        retire(entry, close=True)
        logger.info("disposed engine of tenant %s (%s)", tenant_id, reason)
        return True

    def reap_idle(self, now: float | None = None) -> list[uuid.UUID]:
        """Dispose engines unused for more than ``idle_ttl`` with nothing checked out.

        Returns the tenant ids whose engines were disposed, least recently used first.
        """
        victims: list[EngineEntry[S]] = []
        with self._lock:
            now = self._clock() if now is None else now
            for entry in self._entries.values():
                if now - entry.last_used <= self.idle_ttl:
                    break  # LRU order: every later entry is more recent still
                if checked_out(entry.engine) == 0:
                    victims.append(entry)
            for entry in victims:
                del self._entries[entry.tenant_id]
            self._count_locked("idle", len(victims))
        if victims:
            self._observer.engines_evicted("idle", len(victims))
        for entry in victims:
            retire(entry, close=True)
        if victims:
            logger.info("disposed %d idle tenant engine(s)", len(victims))
        return [entry.tenant_id for entry in victims]

    def dispose_all(self, *, close: bool = True) -> None:
        """Dispose every engine and forget them.

        ``close=True`` at worker exit closes the pooled connections. ``close=False`` in a
        child process after a fork drops the parent's pools without touching their
        connections, which still belong to the parent (SQLAlchemy's documented pattern);
        the at-fork hook of this module does that by itself.
        """
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            self._count_locked("shutdown" if close else "fork", len(entries))
        if close and entries:
            # Not after a fork: the parent counted those engines, and still has them.
            self._observer.engines_evicted("shutdown", len(entries))
        for entry in entries:
            retire(entry, close=close)

    def _touch_locked(self, tenant_id: uuid.UUID) -> EngineEntry[S] | None:
        entry = self._entries.get(tenant_id)
        if entry is not None:
            # The timestamp is taken under the lock so that dict order and last_used
            # agree, which lets reap_idle stop at the first recent entry.
            entry.last_used = self._clock()
            self._entries.move_to_end(tenant_id)
        return entry

    def _create(self, tenant_id: uuid.UUID, creation: _Creation) -> EngineEntry[S]:
        """Build, insert and publish the outcome; always ends the creation."""
        try:
            entry = self._build(tenant_id, creation)
        except BaseException as exc:
            creation.error = exc
            with self._lock:
                self._creating.pop(tenant_id, None)
            creation.done.set()
            raise
        try:
            return self._insert(entry)
        finally:
            creation.done.set()

    def _build(self, tenant_id: uuid.UUID, creation: _Creation) -> EngineEntry[S]:
        """Run the factories, outside the registry lock; fetch again if evicted meanwhile."""
        for attempt in range(1, _MAX_CREATE_ATTEMPTS + 1):
            with self._lock:
                creation.invalidated = False
            engine = self._engine_factory(tenant_id)
            try:
                entry = EngineEntry(
                    tenant_id=tenant_id,
                    engine=engine,
                    sessionmaker=self._session_factory(engine),
                    last_used=self._clock(),
                )
                close_retired_on_checkin(entry)
            except BaseException:
                engine.dispose()
                raise
            with self._lock:
                stale = creation.invalidated
            if not stale:
                break
            if attempt == _MAX_CREATE_ATTEMPTS:
                # Events keep coming; this engine was fetched after all but the last, and
                # the next one evicts it again.
                logger.warning("tenant %s keeps changing; caching its engine anyway", tenant_id)
                break
            logger.info("tenant %s changed while its engine was created; fetching again", tenant_id)
            retire(entry, close=True)
        return entry

    def _insert(self, entry: EngineEntry[S]) -> EngineEntry[S]:
        """Publish a new entry and pop LRU victims in one critical section; dispose after."""
        tenant_id = entry.tenant_id
        with self._lock:
            self._creating.pop(tenant_id, None)
            entry.last_used = self._clock()
            self._entries[tenant_id] = entry
            self.created += 1
            victims = self._pop_lru_locked(keep=tenant_id)
            self._count_locked("lru", len(victims))
            over = len(self._entries) - self.max_engines
            if over > 0:
                self.over_capacity += 1
        self._observer.engine_created()
        if victims:
            self._observer.engines_evicted("lru", len(victims))
        for victim in victims:
            retire(victim, close=True)
        if victims:
            logger.info("disposed %d least recently used tenant engine(s)", len(victims))
        if over > 0:
            # Allowed on purpose: failing the request would be worse, and the per-engine
            # pools and the connection budget still bound the connections. The next insert
            # or reaper pass brings the count down once some engine goes idle.
            logger.warning(
                "%d tenant engines, over max_engines=%d: all the others have connections "
                "checked out; raise APP_MAX_ENGINES if this persists",
                self.max_engines + over,
                self.max_engines,
            )
        return entry

    def _pop_lru_locked(self, keep: uuid.UUID) -> list[EngineEntry[S]]:
        excess = len(self._entries) - self.max_engines
        if excess <= 0:
            return []
        victims: list[EngineEntry[S]] = []
        for tenant_id, entry in self._entries.items():
            if len(victims) == excess:
                break
            if tenant_id != keep and checked_out(entry.engine) == 0:
                victims.append(entry)
        for entry in victims:
            del self._entries[entry.tenant_id]
        return victims

    def _count_locked(self, reason: str, count: int) -> None:
        if count:
            self.evicted_by_reason[reason] = self.evicted_by_reason.get(reason, 0) + count

    def _reset_after_fork(self) -> None:
        """In a forked child: drop the parent's engines, locks and creations.

        Single threaded, without the lock: a parent thread may have held it at fork time,
        and that thread does not exist here to release it.
        """
        entries = list(self._entries.values())
        self._lock = threading.Lock()
        self._entries = OrderedDict()
        self._creating = {}
        self._count_locked("fork", len(entries))
        for entry in entries:
            entry.retired = True
            # close=False: the parent's connections, only forgotten; psycopg2 closes a
            # connection only in the process that opened it (checked on PostgreSQL 15).
            entry.engine.dispose(close=False)
