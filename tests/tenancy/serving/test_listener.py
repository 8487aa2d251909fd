"""TenantEventListener on the suite's cluster, pumped by hand or by a reaper thread."""

from __future__ import annotations

import os
import select
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg2
import pytest
import sqlalchemy as sa

from app.dev.cluster import LocalCluster
from app.tenancy.serving.events import CHANNEL, EventKind, TenantEvent, notify
from app.tenancy.serving.listener import TenantEventListener, connector
from app.tenancy.serving.reaper import Reaper
from config import psycopg2_url
from tests.support import FakeClock, eventually

GUARD = 10.0


class Received:
    """Collects what a listener delivers."""

    def __init__(self) -> None:
        self.events: list[TenantEvent] = []
        self.reconnects = 0
        self.arrived = threading.Event()

    def on_event(self, event: TenantEvent) -> None:
        self.events.append(event)
        self.arrived.set()

    def on_reconnect(self) -> None:
        self.reconnects += 1


@pytest.fixture
def owner_engine(owner_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(psycopg2_url(owner_url))
    yield engine
    engine.dispose()


@pytest.fixture
def received() -> Received:
    return Received()


@pytest.fixture
def listener(owner_url: str, received: Received) -> Iterator[TenantEventListener]:
    made = TenantEventListener(
        connector(owner_url, connect_timeout=5),
        received.on_event,
        on_reconnect=received.on_reconnect,
        min_delay=0.05,
    )
    yield made
    made.close()


def emit(engine: sa.Engine, event: TenantEvent) -> None:
    with engine.begin() as connection:
        notify(connection, event)


def pump_until(listener: TenantEventListener, received: Received, count: int) -> None:
    deadline = time.monotonic() + GUARD
    while len(received.events) < count and time.monotonic() < deadline:
        listener.pump()
        fd = listener.fileno()
        if fd is not None:
            select.select([fd], [], [], 0.05)
        else:
            time.sleep(0.05)


def terminate_listener_backends(pg_cluster: LocalCluster) -> None:
    connection = psycopg2.connect(pg_cluster.superuser_url("tenantpool"))
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (f"tp:listener:{os.getpid()}",),
            )
        connection.commit()
    finally:
        connection.close()


def test_listener_delivers_event_committed_elsewhere(
    listener: TenantEventListener, received: Received, owner_engine: sa.Engine
) -> None:
    listener.pump()  # connects and LISTENs
    event = TenantEvent(EventKind.SUSPENDED, uuid.uuid4())

    emit(owner_engine, event)
    pump_until(listener, received, 1)

    assert received.events == [event]
    assert received.reconnects == 1  # the first connect counts: nothing was cached before


def test_listener_ignores_rolled_back_event(
    listener: TenantEventListener, received: Received, owner_engine: sa.Engine
) -> None:
    listener.pump()
    with owner_engine.connect() as connection:
        notify(connection, TenantEvent(EventKind.DELETED, uuid.uuid4()))
        connection.rollback()
    marker = TenantEvent(EventKind.RESUMED, uuid.uuid4())
    emit(owner_engine, marker)

    pump_until(listener, received, 1)

    assert received.events == [marker]


def test_listener_skips_malformed_payload(
    listener: TenantEventListener, received: Received, owner_engine: sa.Engine
) -> None:
    listener.pump()
    marker = TenantEvent(EventKind.CREATED, uuid.uuid4())
    with owner_engine.begin() as connection:
        connection.execute(sa.text("SELECT pg_notify(:c, 'not json')"), {"c": CHANNEL})
        connection.execute(sa.text('SELECT pg_notify(:c, \'{"kind": "x"}\')'), {"c": CHANNEL})
    emit(owner_engine, marker)

    pump_until(listener, received, 1)

    assert received.events == [marker]


def test_listener_reconnects_by_itself_after_losing_connection(
    listener: TenantEventListener,
    received: Received,
    owner_engine: sa.Engine,
    pg_cluster: LocalCluster,
) -> None:
    listener.pump()
    terminate_listener_backends(pg_cluster)
    assert eventually(lambda: (listener.pump(), not listener.connected)[1], timeout=GUARD)

    assert eventually(lambda: (listener.pump(), listener.connected)[1], timeout=GUARD)
    event = TenantEvent(EventKind.CREDENTIALS_ROTATED, uuid.uuid4())
    emit(owner_engine, event)
    pump_until(listener, received, 1)

    assert received.events == [event]
    assert received.reconnects == 2  # what was cached may be stale: told so again


def test_listener_connect_failures_back_off_exponentially_with_cap(received: Received) -> None:
    clock = FakeClock()
    attempts: list[float] = []

    def refuse() -> psycopg2.extensions.connection:
        attempts.append(clock.now)
        raise psycopg2.OperationalError("connection refused")

    listener = TenantEventListener(
        refuse, received.on_event, clock=clock, min_delay=1.0, max_delay=4.0
    )
    delays = []
    for _ in range(5):
        listener.pump()
        retry = listener.retry_in()
        assert retry is not None
        delays.append(retry)
        listener.pump()  # not due yet: no attempt
        clock.now += retry

    assert len(attempts) == 5
    # Jittered within [delay/2, delay]; the delay doubles from 1 s and stops at 4 s.
    for delay, ceiling in zip(delays, [1.0, 2.0, 4.0, 4.0, 4.0], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert listener.failures == 5


def test_listener_closed_does_nothing(
    listener: TenantEventListener, received: Received, owner_engine: sa.Engine
) -> None:
    listener.pump()
    listener.close()
    emit(owner_engine, TenantEvent(EventKind.DELETED, uuid.uuid4()))

    assert listener.pump() == 0
    assert listener.fileno() is None
    assert received.events == []


def test_listener_event_wakes_reaper_thread_at_once(
    listener: TenantEventListener, received: Received, owner_engine: sa.Engine
) -> None:
    reaper = Reaper(interval=60.0)  # a tick would be far too late
    reaper.listen(listener)
    reaper.start()
    try:
        assert eventually(lambda: listener.connected, timeout=GUARD)
        event = TenantEvent(EventKind.SUSPENDED, uuid.uuid4())
        started = time.monotonic()
        emit(owner_engine, event)
        assert received.arrived.wait(GUARD)
        elapsed = time.monotonic() - started
    finally:
        reaper.stop()

    assert received.events == [event]
    assert elapsed < 1.0


def test_listener_reaper_reconnects_lost_listener(
    listener: TenantEventListener,
    received: Received,
    owner_engine: sa.Engine,
    pg_cluster: LocalCluster,
) -> None:
    reaper = Reaper(interval=60.0)
    reaper.listen(listener)
    reaper.start()
    try:
        assert eventually(lambda: listener.connected, timeout=GUARD)
        terminate_listener_backends(pg_cluster)
        assert eventually(lambda: received.reconnects == 2, timeout=GUARD)
        event = TenantEvent(EventKind.DELETED, uuid.uuid4())
        emit(owner_engine, event)
        assert received.arrived.wait(GUARD)
    finally:
        reaper.stop()

    assert received.events == [event]


def test_listener_read_only_server_is_refused_and_retried_with_back_off(
    cluster_factory: Callable[..., LocalCluster], received: Received
) -> None:
    # A server that is up but takes no writes: a standby named alone, or a demoted primary.
    read_only = cluster_factory(extra_settings={"default_transaction_read_only": "on"})
    clock = FakeClock()
    made = TenantEventListener(
        connector(read_only.superuser_url(), connect_timeout=5),
        received.on_event,
        on_reconnect=received.on_reconnect,
        clock=clock,
        min_delay=1.0,
        max_delay=4.0,
    )
    try:
        delays = []
        for _ in range(4):
            made.pump()
            assert not made.connected
            retry = made.retry_in()
            assert retry is not None
            delays.append(retry)
            clock.advance(retry)
        assert made.failures == 4
        assert received.reconnects == 0  # never connected, so nothing to drop
        assert 0.5 <= delays[0] <= 1.0
        assert 2.0 <= delays[-1] <= 4.0  # doubled up to max_delay (jittered down to half)
    finally:
        made.close()


def test_listener_checks_the_server_every_check_every_seconds(
    listener: TenantEventListener, owner_engine: sa.Engine
) -> None:
    listener.pump()
    assert listener.connected
    due = listener.retry_in()
    # While connected, the reaper is woken for the next check that the server takes writes.
    assert due is not None
    assert 0.0 <= due <= listener.check_every
