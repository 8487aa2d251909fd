"""Tenancy on the suite's cluster: rejected logins, change events, limits on the role."""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from app import create_app
from app.dev.cluster import LocalCluster
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.provisioning import (
    ProvisionedTenant,
    create_tenant,
    role_limits,
    set_role_limits,
)
from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving.events import EventKind, TenantEvent, notify
from app.tenancy.serving.ways import ServingMode, ServingWays
from config import Settings
from tests.support import FakeClock, eventually, failed_logins, set_role_password


def _count_users(tenancy: Tenancy, tenant: ProvisionedTenant) -> int:
    session = tenancy.open_session(tenant.id)
    try:
        return session.execute(sa.text("SELECT count(*) FROM users")).scalar_one()
    finally:
        session.close()


def _emit(tenancy: Tenancy, event: TenantEvent) -> None:
    with tenancy.control_engine.begin() as connection:
        notify(connection, event)


def test_tenancy_open_session_rebuilds_engine_once_after_rotation_without_event(
    tenancy: Tenancy, tenant_a: ProvisionedTenant, pg_cluster: LocalCluster
) -> None:
    _count_users(tenancy, tenant_a)
    stale = tenancy.registry.get(tenant_a.id)
    set_role_password(tenancy.control_engine, tenant_a.id, tenancy.keyring)
    stale.engine.dispose()  # its idle connection would still work: force a new login

    assert _count_users(tenancy, tenant_a) == 0

    assert tenancy.registry.get(tenant_a.id) is not stale
    assert eventually(lambda: failed_logins(pg_cluster.log_path, tenant_a.id) == 1)


def test_tenancy_rejected_credentials_back_off_after_second_login(
    tenancy: Tenancy,
    make_tenant: Callable[[], ProvisionedTenant],
    pg_cluster: LocalCluster,
) -> None:
    broken, healthy = make_tenant(), make_tenant()
    set_role_password(tenancy.control_engine, broken.id)  # behind the service's back

    for _ in range(5):
        with pytest.raises(TenantUnavailable) as raised:
            tenancy.open_session(broken.id)
        assert raised.value.code == "credentials_rejected"
        assert raised.value.retry_after >= 10

    assert eventually(lambda: failed_logins(pg_cluster.log_path, broken.id) == 2)
    assert broken.id not in tenancy.registry
    assert _count_users(tenancy, healthy) == 0


def test_tenancy_rotation_event_ends_back_off(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    tenancy.start_background()  # the worker's reaper hears the event
    set_role_password(tenancy.control_engine, tenant_a.id)
    for _ in range(2):
        with pytest.raises(TenantUnavailable):
            tenancy.open_session(tenant_a.id)

    set_role_password(tenancy.control_engine, tenant_a.id, tenancy.keyring)
    _emit(tenancy, TenantEvent(EventKind.CREDENTIALS_ROTATED, tenant_a.id))

    def works() -> bool:
        try:
            return _count_users(tenancy, tenant_a) == 0
        except TenantUnavailable:
            return False

    assert eventually(works, timeout=5)


# Change events evicting engines (real changes) or not (forged ones): tests/tenancy/test_events.py


def test_tenancy_connection_says_tenant_and_worker(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    session = tenancy.open_session(tenant_a.id)
    try:
        name = session.execute(sa.text("SHOW application_name")).scalar_one()
    finally:
        session.close()

    assert name == f"tp:{tenant_a.id}:{os.getpid()}"


def test_tenancy_default_limits_are_on_the_role(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    assert role_limits(tenancy.clusters, tenant_a.id) == (
        tenancy.limits.connection_limit,
        tenancy.limits.statement_timeout_ms,
    )


def test_tenancy_limits_can_be_set_per_tenant_at_creation(tenancy: Tenancy) -> None:
    limits = dataclasses.replace(tenancy.limits, connection_limit=3, statement_timeout_ms=250)

    created = create_tenant(tenancy.clusters, tenancy.keyring, "limited-at-birth", limits)

    assert role_limits(tenancy.clusters, created.id) == (3, 250)


def test_tenancy_set_role_limits_applies_them_to_new_sessions(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    _count_users(tenancy, tenant_a)

    set_role_limits(tenancy.clusters, tenant_a.id, connection_limit=5, statement_timeout_ms=123)

    assert role_limits(tenancy.clusters, tenant_a.id) == (5, 123)
    # The event makes every worker drop the engine, whose sessions had the old timeout.
    assert eventually(lambda: tenant_a.id not in tenancy.registry, timeout=5)
    session = tenancy.open_session(tenant_a.id)
    try:
        assert session.execute(sa.text("SHOW statement_timeout")).scalar_one() == "123ms"
    finally:
        session.close()


def test_tenancy_set_role_limits_of_unknown_tenant_raises(tenancy: Tenancy) -> None:
    with pytest.raises(LookupError):
        set_role_limits(tenancy.clusters, uuid.uuid4(), connection_limit=1, statement_timeout_ms=1)


def test_tenancy_mix_serves_a_hot_tenant_shared_when_its_engine_cannot_be_had(
    settings: Settings, migrated: None, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> None:
    """mix: the budget is busy with another hot tenant; the next one is served shared, not 503."""
    app = create_app(
        dataclasses.replace(
            settings, serving="mix", connection_budget=1, tenant_pool_size=1, pool_timeout=0.2
        )
    )
    tenancy = tenancy_of(app)
    clock = FakeClock()
    tenancy.ways = ServingWays(
        ServingMode.MIX, dedicated_slots=2, window=1, min_requests=1, clock=clock
    )
    for tenant in (tenant_a, tenant_b):
        tenancy.ways.dedicated(tenant.id)
    clock.advance(1)  # both are hot from the next request on
    try:
        holder = tenancy.open_session(tenant_a.id)  # takes the budget's one slot
        try:
            assert holder.scalar(sa.text("SELECT session_user = current_user")) is True
            other = tenancy.open_session(tenant_b.id)
            try:
                served_shared = other.scalar(sa.text("SELECT session_user <> current_user"))
                assert served_shared is True
                assert _count_users(tenancy, tenant_b) == 0  # and it works
            finally:
                other.close()
        finally:
            holder.close()
    finally:
        tenancy.close()
