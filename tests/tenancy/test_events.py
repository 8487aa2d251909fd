"""Change events are hints: a forged NOTIFY costs at most a reload, never a wrong state.

PostgreSQL has no privilege for NOTIFY: any role that may connect to the control plane's
database can send on our channel, a tenant's own role included. Here one does, for real,
and the worker must go on serving the tenant it named as before. Events are handled by the
worker's reaper thread, in the order their transactions committed; a real change made
after the forged events (a rotation of another tenant) marks when they have been handled.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2.extensions
import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from app.tenancy import Tenancy
from app.tenancy.control.provisioning import (
    ProvisionedTenant,
    delete_tenant,
    rotate_credentials,
    suspend_tenant,
)
from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving.events import CHANNEL, EventKind, TenantEvent, notify
from config import psycopg2_url
from tests.support import auth_headers, connect_as, eventually, set_role_password, stored_password


@pytest.fixture
def forger(
    tenancy: Tenancy, make_tenant: Callable[[], ProvisionedTenant], owner_url: str
) -> Iterator[psycopg2.extensions.connection]:
    """A connection as a tenant's own role (no grant beyond its tenant's rows)."""
    tenant = make_tenant()
    password = stored_password(tenancy.control_engine, tenancy.keyring, tenant.id)
    connection = connect_as(owner_url, tenant.id, password)
    connection.autocommit = True
    yield connection
    connection.close()


@pytest.fixture
def owner(owner_url: str) -> Iterator[sa.Engine]:
    """The owner, on an engine of its own: the worker's queries are counted on its engine."""
    engine = sa.create_engine(psycopg2_url(owner_url), poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def _forge(connection: psycopg2.extensions.connection, *payloads: str) -> None:
    with connection.cursor() as cursor:
        for payload in payloads:
            cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def _warm(client: FlaskClient, tenant: ProvisionedTenant) -> None:
    assert client.get("/v1/users", headers=auth_headers(tenant)).status_code == 200


class Marker:
    """A real credential rotation of a tenant of its own; ``handled()`` once its engine went."""

    def __init__(self, tenancy: Tenancy, client: FlaskClient, tenant: ProvisionedTenant) -> None:
        self._tenancy, self._tenant = tenancy, tenant
        _warm(client, tenant)
        self._engine = tenancy.registry.get(tenant.id).engine

    def send(self, owner: sa.Engine) -> None:
        set_role_password(owner, self._tenant.id, self._tenancy.keyring)
        with owner.begin() as connection:
            notify(connection, TenantEvent(EventKind.CREDENTIALS_ROTATED, self._tenant.id))

    def handled(self) -> bool:
        entry = self._tenancy.registry.peek(self._tenant.id)
        return entry is None or entry.engine is not self._engine


@pytest.fixture
def marker(
    tenancy: Tenancy, client: FlaskClient, make_tenant: Callable[[], ProvisionedTenant]
) -> Marker:
    tenancy.start_background()  # the worker's reaper hears the events
    return Marker(tenancy, client, make_tenant())


@pytest.mark.parametrize("kind", list(EventKind))
def test_events_forged_by_a_tenant_role_leave_the_named_tenant_served(
    tenancy: Tenancy,
    client: FlaskClient,
    tenant_a: ProvisionedTenant,
    forger: psycopg2.extensions.connection,
    marker: Marker,
    owner: sa.Engine,
    kind: EventKind,
) -> None:
    _warm(client, tenant_a)
    engine = tenancy.registry.get(tenant_a.id).engine
    evicted = dict(tenancy.registry.evicted_by_reason)

    _forge(forger, TenantEvent(kind, tenant_a.id).to_payload())
    marker.send(owner)
    assert eventually(marker.handled, timeout=10)

    assert tenancy.registry.get(tenant_a.id).engine is engine  # not evicted
    assert tenancy.registry.evicted_by_reason.get(kind.value, 0) == evicted.get(kind.value, 0) + (
        1 if kind is EventKind.CREDENTIALS_ROTATED else 0  # the marker's own, real one
    )
    assert client.get("/v1/users", headers=auth_headers(tenant_a)).status_code == 200


def test_events_forged_flood_for_unknown_ids_costs_no_query(
    tenancy: Tenancy,
    forger: psycopg2.extensions.connection,
    marker: Marker,
    owner: sa.Engine,
) -> None:
    queries: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        queries.append(statement)

    payloads = [
        json.dumps({"kind": kind.value, "tenant_id": str(uuid.uuid4())})
        for kind in EventKind
        for _ in range(125)
    ]
    sa.event.listen(tenancy.control_engine, "before_cursor_execute", count)
    try:
        _forge(forger, *payloads, "not json", '{"kind": "deleted"}')
        marker.send(owner)
        assert eventually(marker.handled, timeout=10)
    finally:
        sa.event.remove(tenancy.control_engine, "before_cursor_execute", count)

    assert len(payloads) == 1000
    assert len(queries) == 1  # the marker's own reload; the thousand forged events: none


@pytest.mark.parametrize("change", ["rotate", "suspend", "delete"])
def test_events_of_real_changes_evict_the_engine(
    tenancy: Tenancy,
    client: FlaskClient,
    tenant_a: ProvisionedTenant,
    marker: Marker,
    change: str,
) -> None:
    _warm(client, tenant_a)
    engine = tenancy.registry.get(tenant_a.id).engine
    if change == "rotate":
        rotate_credentials(
            tenancy.clusters, tenancy.keyring, tenant_a.id, scram_iterations=64, actor="test"
        )
    elif change == "suspend":
        suspend_tenant(tenancy.clusters, tenant_a.id, actor="test")
    else:
        delete_tenant(tenancy.clusters, tenant_a.id, actor="test")

    def gone() -> bool:
        entry = tenancy.registry.peek(tenant_a.id)
        return entry is None or entry.engine is not engine

    assert eventually(gone, timeout=10)
    expected = {"rotate": 200, "suspend": 403, "delete": 401}[change]
    assert client.get("/v1/users", headers=auth_headers(tenant_a)).status_code == expected


def test_events_forged_rotation_does_not_end_a_back_off(
    tenancy: Tenancy,
    tenant_a: ProvisionedTenant,
    forger: psycopg2.extensions.connection,
    marker: Marker,
    owner: sa.Engine,
) -> None:
    set_role_password(owner, tenant_a.id)  # behind the service's back: logins fail
    for _ in range(2):
        with pytest.raises(TenantUnavailable):
            tenancy.open_session(tenant_a.id)
    assert tenancy.backoff.version_of(tenant_a.id)[0]

    _forge(forger, TenantEvent(EventKind.CREDENTIALS_ROTATED, tenant_a.id).to_payload())
    marker.send(owner)
    assert eventually(marker.handled, timeout=10)

    # Still backing off: a forged rotation does not buy another round of failed logins.
    assert tenancy.backoff.version_of(tenant_a.id)[0]
    with pytest.raises(TenantUnavailable) as raised:
        tenancy.open_session(tenant_a.id)
    assert raised.value.code == "credentials_rejected"
