"""EngineRegistry without a database: lazy engines, a fake clock, real threads.

``postgresql+psycopg2://...@127.0.0.1:1`` engines never connect unless used. Where a test
needs connections really checked out of a QueuePool, the tenant's engine is a SQLite
file engine (QueuePool since SQLAlchemy 2.0) in ``tmp_path``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from app.tenancy.serving.observer import Observer
from app.tenancy.serving.registry import EngineRegistry
from tests.support import FakeClock, lazy_engine, run_in_child

T = TypeVar("T")

TTL = 60.0
GUARD = 5.0  # seconds before a blocked call fails its test instead of hanging the suite


class Factory:
    """An engine factory that counts its calls and remembers each engine's first pool."""

    def __init__(self, make: Callable[[uuid.UUID], sa.Engine] = lazy_engine) -> None:
        self.make = make
        self.calls: list[uuid.UUID] = []
        self.engines: list[sa.Engine] = []
        self._first_pools: dict[int, sa.pool.Pool] = {}
        self._lock = threading.Lock()

    def __call__(self, tenant_id: uuid.UUID) -> sa.Engine:
        engine = self.make(tenant_id)
        with self._lock:
            self.calls.append(tenant_id)
            self.engines.append(engine)
            self._first_pools[id(engine)] = engine.pool
        return engine

    def disposed(self, engine: sa.Engine) -> bool:
        """Whether ``engine.dispose()`` ran (it always replaces the pool)."""
        return engine.pool is not self._first_pools[id(engine)]


def make_registry(
    factory: Callable[[uuid.UUID], sa.Engine],
    clock: FakeClock | None = None,
    *,
    max_engines: int = 10,
) -> EngineRegistry:
    return EngineRegistry(
        factory,
        session_factory=lambda engine: orm.sessionmaker(bind=engine),
        max_engines=max_engines,
        idle_ttl=TTL,
        clock=clock or FakeClock(),
    )


def call_with_guard(fn: Callable[[], T], timeout: float = GUARD) -> T:
    """Run ``fn`` in a daemon thread; fail (not hang) if it is still blocked after timeout."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the call is blocked"
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
def sqlite_factory(tmp_path: Path) -> Iterator[Factory]:
    """Tenant engines on SQLite files, so connections can really be checked out."""
    made = Factory(lambda tenant_id: sa.create_engine(f"sqlite:///{tmp_path / tenant_id.hex}.db"))
    yield made
    for engine in made.engines:
        engine.dispose()


class BlockingFactory(Factory):
    """A factory whose calls for ``slow`` wait until ``release`` is set."""

    def __init__(self, slow: uuid.UUID) -> None:
        super().__init__()
        self.slow = slow
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, tenant_id: uuid.UUID) -> sa.Engine:
        if tenant_id == self.slow:
            self.started.set()
            assert self.release.wait(GUARD), "test never released the slow factory"
        return super().__call__(tenant_id)


@pytest.fixture
def blocked() -> Iterator[tuple[BlockingFactory, EngineRegistry, threading.Thread]]:
    """A registry whose creation of one tenant's engine is in progress and blocked."""
    slow = uuid.uuid4()
    factory = BlockingFactory(slow)
    registry = make_registry(factory)
    thread = threading.Thread(target=registry.get, args=(slow,), daemon=True)
    thread.start()
    assert factory.started.wait(GUARD)
    yield factory, registry, thread
    factory.release.set()
    thread.join(GUARD)


def test_registry_get_creates_engine_once_and_caches(factory: Factory) -> None:
    registry = make_registry(factory)
    tenant = uuid.uuid4()

    first = registry.get(tenant)
    second = registry.get(tenant)

    assert second is first
    assert factory.calls == [tenant]
    assert first.engine is factory.engines[0]
    assert first.sessionmaker.kw["bind"] is first.engine
    assert tenant in registry
    assert len(registry) == 1
    assert registry.created == 1


def test_registry_get_records_last_used(factory: Factory, clock: FakeClock) -> None:
    registry = make_registry(factory, clock)
    entry = registry.get(uuid.uuid4())
    clock.advance(7)

    registry.get(entry.tenant_id)

    assert entry.last_used == clock.now


def test_registry_reap_idle_disposes_engine_idle_longer_than_ttl(
    factory: Factory, clock: FakeClock
) -> None:
    registry = make_registry(factory, clock)
    entry = registry.get(uuid.uuid4())
    clock.advance(TTL + 1)

    reaped = registry.reap_idle()

    assert reaped == [entry.tenant_id]
    assert entry.tenant_id not in registry
    assert entry.retired
    assert factory.disposed(entry.engine)
    assert registry.evicted_by_reason == {"idle": 1}


def test_registry_reap_idle_keeps_recently_used_engine(factory: Factory, clock: FakeClock) -> None:
    registry = make_registry(factory, clock)
    old = registry.get(uuid.uuid4())
    clock.advance(TTL - 10)
    recent = registry.get(uuid.uuid4())
    clock.advance(11)

    reaped = registry.reap_idle()

    assert reaped == [old.tenant_id]
    assert recent.tenant_id in registry
    assert not factory.disposed(recent.engine)


def test_registry_reap_idle_uses_given_now(factory: Factory, clock: FakeClock) -> None:
    registry = make_registry(factory, clock)
    entry = registry.get(uuid.uuid4())

    assert registry.reap_idle(now=clock.now + TTL) == []
    assert registry.reap_idle(now=clock.now + TTL + 1) == [entry.tenant_id]


def test_registry_reap_idle_keeps_engine_with_checked_out_connection(
    sqlite_factory: Factory, clock: FakeClock
) -> None:
    registry = make_registry(sqlite_factory, clock)
    busy = registry.get(uuid.uuid4())
    idle = registry.get(uuid.uuid4())
    clock.advance(TTL + 1)

    with busy.engine.connect():
        reaped = registry.reap_idle()

    assert reaped == [idle.tenant_id]
    assert busy.tenant_id in registry


def test_registry_get_concurrent_first_requests_create_one_engine() -> None:
    def slow_engine(tenant_id: uuid.UUID) -> sa.Engine:
        time.sleep(0.05)  # widens the window in which the other threads arrive
        return lazy_engine(tenant_id)

    factory = Factory(slow_engine)
    registry = make_registry(factory)
    tenant = uuid.uuid4()
    barrier = threading.Barrier(50)
    entries: list[Any] = []

    def request() -> None:
        barrier.wait(GUARD)
        entries.append(registry.get(tenant))

    threads = [threading.Thread(target=request, daemon=True) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD)

    assert len(entries) == 50
    assert factory.calls == [tenant]
    assert all(entry is entries[0] for entry in entries)


def test_registry_slow_creation_does_not_block_other_tenant_creation(
    blocked: tuple[BlockingFactory, EngineRegistry, threading.Thread],
) -> None:
    _factory, registry, _thread = blocked
    other = uuid.uuid4()

    entry = call_with_guard(lambda: registry.get(other))

    assert entry.tenant_id == other


def test_registry_slow_creation_does_not_block_hot_path(
    blocked: tuple[BlockingFactory, EngineRegistry, threading.Thread],
) -> None:
    factory, registry, _thread = blocked
    present = call_with_guard(lambda: registry.get(uuid.uuid4()))
    calls = len(factory.calls)

    again = call_with_guard(lambda: registry.get(present.tenant_id))

    assert again is present
    assert len(factory.calls) == calls


def test_registry_slow_creation_completes_once_released(
    blocked: tuple[BlockingFactory, EngineRegistry, threading.Thread],
) -> None:
    factory, registry, thread = blocked

    factory.release.set()
    thread.join(GUARD)

    assert factory.slow in registry
    assert factory.calls == [factory.slow]


def test_registry_factory_error_propagates_and_caches_nothing() -> None:
    def broken(tenant_id: uuid.UUID) -> sa.Engine:
        raise ConnectionError("password authentication failed")

    registry = make_registry(broken)
    tenant = uuid.uuid4()

    with pytest.raises(ConnectionError, match="password authentication failed"):
        registry.get(tenant)

    assert tenant not in registry
    assert registry.created == 0


def test_registry_factory_error_then_later_call_retries(factory: Factory) -> None:
    failures = [ConnectionError("database restarting")]

    def flaky(tenant_id: uuid.UUID) -> sa.Engine:
        if failures:
            raise failures.pop()
        return factory(tenant_id)

    registry = make_registry(flaky)
    tenant = uuid.uuid4()
    with pytest.raises(ConnectionError):
        registry.get(tenant)

    entry = call_with_guard(lambda: registry.get(tenant))  # no creation lock left behind

    assert entry.engine is factory.engines[0]
    assert tenant in registry


def test_registry_factory_error_reaches_waiters_of_same_attempt() -> None:
    tenant = uuid.uuid4()
    entered = threading.Event()
    release = threading.Event()
    calls: list[uuid.UUID] = []

    def slow_and_broken(tenant_id: uuid.UUID) -> sa.Engine:
        calls.append(tenant_id)
        entered.set()
        assert release.wait(GUARD)
        raise ConnectionError("connection refused")

    registry = make_registry(slow_and_broken)
    errors: list[BaseException] = []

    def request() -> None:
        try:
            registry.get(tenant)
        except ConnectionError as exc:
            errors.append(exc)

    arrived = threading.Semaphore(0)

    def late_request() -> None:
        arrived.release()
        request()

    leader = threading.Thread(target=request, daemon=True)
    leader.start()
    assert entered.wait(GUARD)
    waiters = [threading.Thread(target=late_request, daemon=True) for _ in range(5)]
    for waiter in waiters:
        waiter.start()
    for _ in waiters:
        assert arrived.acquire(timeout=GUARD)
    time.sleep(0.05)  # from arriving to waiting on the creation takes a few bytecodes
    release.set()
    for thread in [leader, *waiters]:
        thread.join(GUARD)

    assert len(errors) == 6
    assert calls == [tenant]
    assert tenant not in registry


def test_registry_session_factory_error_disposes_engine(factory: Factory) -> None:
    def broken_sessionmaker(engine: sa.Engine) -> orm.sessionmaker[orm.Session]:
        raise RuntimeError("bad session configuration")

    registry = EngineRegistry(
        factory, session_factory=broken_sessionmaker, max_engines=2, idle_ttl=TTL
    )
    tenant = uuid.uuid4()

    with pytest.raises(RuntimeError, match="bad session configuration"):
        registry.get(tenant)

    assert factory.disposed(factory.engines[0])
    assert tenant not in registry


def test_registry_lru_evicts_least_recently_used_idle_engine(
    factory: Factory, clock: FakeClock
) -> None:
    registry = make_registry(factory, clock, max_engines=2)
    a = registry.get(uuid.uuid4())
    clock.advance(1)
    b = registry.get(uuid.uuid4())
    clock.advance(1)
    registry.get(a.tenant_id)  # a is now the most recently used
    clock.advance(1)

    c = registry.get(uuid.uuid4())

    assert b.tenant_id not in registry
    assert factory.disposed(b.engine)
    assert a.tenant_id in registry
    assert c.tenant_id in registry
    assert registry.evicted_by_reason == {"lru": 1}


def test_registry_lru_skips_engines_with_checked_out_connections(
    sqlite_factory: Factory, clock: FakeClock
) -> None:
    registry = make_registry(sqlite_factory, clock, max_engines=2)
    busy = registry.get(uuid.uuid4())
    clock.advance(1)
    idle = registry.get(uuid.uuid4())
    clock.advance(1)

    with busy.engine.connect():
        registry.get(uuid.uuid4())

    assert busy.tenant_id in registry
    assert idle.tenant_id not in registry
    assert len(registry) == 2


def test_registry_lru_goes_over_bound_when_all_engines_busy(
    sqlite_factory: Factory, clock: FakeClock
) -> None:
    registry = make_registry(sqlite_factory, clock, max_engines=2)
    a = registry.get(uuid.uuid4())
    b = registry.get(uuid.uuid4())

    with a.engine.connect(), b.engine.connect():
        registry.get(uuid.uuid4())

    assert len(registry) == 3
    assert registry.over_capacity == 1
    assert registry.evicted_by_reason == {}


def test_registry_evict_disposes_and_removes(factory: Factory) -> None:
    registry = make_registry(factory)
    entry = registry.get(uuid.uuid4())

    assert registry.evict(entry.tenant_id, reason="rotated") is True

    assert entry.tenant_id not in registry
    assert entry.retired
    assert factory.disposed(entry.engine)
    assert registry.evicted_by_reason == {"rotated": 1}


def test_registry_evict_unknown_tenant_returns_false(factory: Factory) -> None:
    registry = make_registry(factory)
    registry.get(uuid.uuid4())

    assert registry.evict(uuid.uuid4()) is False
    assert len(registry) == 1


def test_registry_evict_closes_busy_connection_on_checkin(sqlite_factory: Factory) -> None:
    # dispose() alone would leave this connection open in the orphaned pool once returned.
    registry = make_registry(sqlite_factory)
    entry = registry.get(uuid.uuid4())
    connection = entry.engine.connect()
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None

    registry.evict(entry.tenant_id)
    connection.close()

    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        dbapi_connection.cursor()


def test_registry_evict_during_creation_fetches_again(
    blocked: tuple[BlockingFactory, EngineRegistry, threading.Thread],
) -> None:
    factory, registry, thread = blocked

    assert registry.evict(factory.slow) is False  # nothing cached yet, but the attempt is stale
    factory.release.set()
    thread.join(GUARD)

    stale, fresh = factory.engines
    assert factory.disposed(stale)
    assert registry.get(factory.calls[0]).engine is fresh


def test_registry_dispose_all_disposes_every_engine(factory: Factory) -> None:
    registry = make_registry(factory)
    entries = [registry.get(uuid.uuid4()) for _ in range(3)]

    registry.dispose_all()

    assert len(registry) == 0
    assert all(factory.disposed(entry.engine) for entry in entries)
    assert registry.evicted_by_reason == {"shutdown": 3}


def test_registry_dispose_all_without_close_leaves_connections_open(
    sqlite_factory: Factory,
) -> None:
    registry = make_registry(sqlite_factory)
    entry = registry.get(uuid.uuid4())
    with entry.engine.connect() as connection:
        dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None

    registry.dispose_all(close=False)

    assert len(registry) == 0
    dbapi_connection.cursor().close()  # still open: in a forked child it is the parent's
    dbapi_connection.close()


def test_registry_reset_after_fork_forgets_engines_held_under_lock(factory: Factory) -> None:
    registry = make_registry(factory)
    inherited = registry.get(uuid.uuid4())

    with registry._lock:  # a parent thread held the lock at fork time, and never releases it
        registry._reset_after_fork()
        entry = call_with_guard(lambda: registry.get(uuid.uuid4()))

    assert inherited.tenant_id not in registry
    assert factory.disposed(inherited.engine)
    assert entry.tenant_id in registry
    assert registry.evicted_by_reason == {"fork": 1}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_registry_forked_child_starts_empty(factory: Factory) -> None:
    registry = make_registry(factory)
    registry.get(uuid.uuid4())

    def child() -> bool:
        return len(registry) == 0 and registry.get(uuid.uuid4()) is not None

    with registry._lock:  # held across the fork: the child must not inherit it locked
        status = run_in_child(child)

    assert status == 0
    assert len(registry) == 1  # the parent keeps its engine


class RecordingObserver(Observer):
    def __init__(self) -> None:
        self.created = 0
        self.evicted: dict[str, int] = {}

    def engine_created(self) -> None:
        self.created += 1

    def engines_evicted(self, reason: str, count: int) -> None:
        self.evicted[reason] = self.evicted.get(reason, 0) + count


def test_registry_tells_observer_of_creations_and_evictions(
    factory: Factory, clock: FakeClock
) -> None:
    observer = RecordingObserver()
    registry = EngineRegistry(
        factory,
        session_factory=lambda engine: orm.sessionmaker(bind=engine),
        max_engines=2,
        idle_ttl=TTL,
        clock=clock,
        observer=observer,
    )
    first = registry.get(uuid.uuid4())
    registry.get(uuid.uuid4())
    registry.get(uuid.uuid4())  # first is the least recently used
    registry.evict(registry.get(uuid.uuid4()).tenant_id, "suspended")
    clock.advance(TTL + 1)
    registry.reap_idle()
    registry.get(uuid.uuid4())
    registry._reset_after_fork()  # the parent still holds these: not reported

    assert first.tenant_id not in registry
    assert observer.created == 5
    assert observer.evicted == {"lru": 2, "suspended": 1, "idle": 1}
    registry.get(uuid.uuid4())
    registry.dispose_all()
    assert observer.evicted["shutdown"] == 1


class PausingCheckout:
    """Makes the first checkout of the first engine wait, between ``get`` and its connection."""

    def __init__(self, factory: Factory) -> None:
        self.reached = threading.Event()
        self.proceed = threading.Event()
        self._armed = True
        self._factory = factory

    def arm(self, engine: sa.Engine) -> None:
        sa.event.listen(engine, "checkout", self._pause)

    def _pause(self, *args: Any) -> None:
        if self._armed:
            self._armed = False
            self.reached.set()
            assert self.proceed.wait(GUARD), "the test never let the checkout go on"


def test_registry_connect_never_hands_out_an_engine_evicted_meanwhile(
    sqlite_factory: Factory,
) -> None:
    """Forced interleaving: get() returned the entry, evict() retires it, then the checkout."""
    pausing = PausingCheckout(sqlite_factory)
    made = sqlite_factory.make

    def make(tenant_id: uuid.UUID) -> sa.Engine:
        engine = made(tenant_id)
        if not sqlite_factory.engines:
            pausing.arm(engine)
        return engine

    sqlite_factory.make = make
    registry = make_registry(sqlite_factory)
    tenant = uuid.uuid4()
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(registry.connect(tenant)))
    thread.start()
    assert pausing.reached.wait(GUARD)  # inside engine.connect() of the first engine

    assert registry.evict(tenant, "test")
    pausing.proceed.set()
    thread.join(GUARD)

    entry, connection = outcome[0]
    stale, fresh = sqlite_factory.engines
    assert entry.engine is fresh
    assert not entry.retired
    assert connection.engine is fresh
    assert sqlite_factory.disposed(stale)
    assert registry.get(tenant) is entry
    connection.close()


def test_registry_evict_after_connect_lets_the_holder_finish(sqlite_factory: Factory) -> None:
    """The other interleaving: the connection was handed out, then the engine is evicted."""
    registry = make_registry(sqlite_factory)
    entry, connection = registry.connect(uuid.uuid4())

    registry.evict(entry.tenant_id, "test")

    assert connection.exec_driver_sql("SELECT 1").scalar() == 1  # the request finishes
    dbapi_connection = connection.connection.dbapi_connection
    connection.close()  # and its connection is closed, not pooled again
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        dbapi_connection.cursor()  # type: ignore[union-attr]
