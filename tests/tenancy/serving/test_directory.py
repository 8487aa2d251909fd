"""The worker's tenant directory: unknown ids are cheap and bounded, no invalidation is lost.

Queries are counted on a control-plane engine of the test's own; the race of a load with a
change event is forced with events, never with sleeps.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from app import create_app
from app.db import create_control_engine
from app.models import Tenant
from app.tenancy import tenancy_of
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.serving.directory import TenantDirectory
from config import Settings, psycopg2_url
from tests.support import FakeClock

GUARD = 10.0


class Counted:
    """A control-plane engine that counts the statements it runs."""

    def __init__(self, url: str) -> None:
        self.engine = create_control_engine(psycopg2_url(url))
        self.queries = 0
        sa.event.listen(self.engine, "before_cursor_execute", self._count)

    def _count(self, *args: Any) -> None:
        self.queries += 1


@pytest.fixture
def control(owner_url: str, migrated: None) -> Iterator[Counted]:
    counted = Counted(owner_url)
    yield counted
    counted.engine.dispose()


def test_directory_unknown_id_is_looked_up_once_per_ttl(control: Counted) -> None:
    clock = FakeClock()
    directory = TenantDirectory(control.engine, ttl=60, clock=clock)
    unknown = [uuid.uuid4() for _ in range(50)]
    control.queries = 0

    for number in range(2000):
        assert directory.find(unknown[number % len(unknown)]) is None

    assert control.queries == len(unknown)
    clock.advance(61)
    assert directory.find(unknown[0]) is None
    assert control.queries == len(unknown) + 1


def test_directory_unknown_ids_are_bounded(control: Counted) -> None:
    directory = TenantDirectory(control.engine, ttl=60, unknown_size=100)
    for _ in range(300):
        directory.find(uuid.uuid4())
    assert directory.unknown_cached() == 100


def test_directory_event_naming_an_unknown_id_makes_it_looked_up_again(control: Counted) -> None:
    """A ``created`` event invalidates the id it names, so a new tenant is found at once."""
    directory = TenantDirectory(control.engine, ttl=60)
    unknown = uuid.uuid4()
    assert directory.find(unknown) is None
    control.queries = 0

    directory.invalidate(unknown)
    directory.find(unknown)

    assert directory.unknown_cached() == 1
    assert control.queries == 1


class Paused:
    """Holds the first load of the directory's engine after its query, until released."""

    def __init__(self, engine: sa.Engine) -> None:
        self.loaded = threading.Event()
        self.release = threading.Event()
        self._first = True
        sa.event.listen(engine, "after_cursor_execute", self._pause)

    def _pause(self, *args: Any) -> None:
        if self._first:
            self._first = False
            self.loaded.set()
            assert self.release.wait(GUARD)


def _set_status(engine: sa.Engine, tenant_id: uuid.UUID, status: str) -> None:
    with engine.begin() as connection:
        connection.execute(sa.update(Tenant).where(Tenant.id == tenant_id).values(status=status))


@pytest.mark.parametrize("forget", ["invalidate", "clear"])
def test_directory_load_that_raced_an_invalidation_is_not_cached(
    control: Counted, tenant_a: ProvisionedTenant, forget: str
) -> None:
    directory = TenantDirectory(control.engine, ttl=60)
    paused = Paused(control.engine)
    found: list[Any] = []
    loader = threading.Thread(target=lambda: found.append(directory.find(tenant_a.id)))
    loader.start()
    try:
        assert paused.loaded.wait(GUARD)  # the load has read the row: active
        _set_status(control.engine, tenant_a.id, "suspended")
        getattr(directory, forget)(*([tenant_a.id] if forget == "invalidate" else []))
    finally:
        paused.release.set()
        loader.join(GUARD)
    try:
        assert found[0].status == "active"  # the racing request answers as of its start
        assert directory.find(tenant_a.id).status == "suspended"  # not cached: read again
    finally:
        _set_status(control.engine, tenant_a.id, "active")


def test_directory_load_without_a_race_is_cached(
    control: Counted, tenant_a: ProvisionedTenant
) -> None:
    directory = TenantDirectory(control.engine, ttl=60)
    directory.find(tenant_a.id)
    control.queries = 0
    for _ in range(10):
        assert directory.find(tenant_a.id) is not None
    assert control.queries == 0


def test_directory_trusts_answers_longer_only_while_it_hears_change_events(
    control: Counted, tenant_a: ProvisionedTenant
) -> None:
    """Listening, a record is not read again after the TTL; once the listener is down, a
    record older than the TTL is, at its next use."""
    clock = FakeClock()
    directory = TenantDirectory(control.engine, ttl=60, clock=clock)
    listening = True
    directory.listening = lambda: listening
    unknown = uuid.uuid4()
    directory.find(tenant_a.id)
    directory.find(unknown)
    control.queries = 0

    clock.advance(61 * 14)  # within 15 TTLs
    assert directory.find(tenant_a.id) is not None
    assert directory.find(unknown) is None
    assert control.queries == 0

    listening = False
    assert directory.find(tenant_a.id) is not None
    assert directory.find(unknown) is None
    assert control.queries == 2

    listening = True
    clock.advance(60 * 15)  # past 15 TTLs: read again even while listening
    directory.find(tenant_a.id)
    assert control.queries == 3


def test_app_directory_listens_through_the_workers_listener(
    settings: Settings, migrated: None
) -> None:
    """The worker's directory asks its own change-event listener whether it is connected."""
    tenancy = tenancy_of(create_app(settings))
    listener = tenancy.listener
    assert listener is not None
    try:
        listener.pump()  # connects it, unless the process's reaper did already
        assert listener.connected
        assert tenancy.directory.listening() is True
        listener.close()
        assert tenancy.directory.listening() is False
    finally:
        tenancy.close()
