"""The worker's gateway pools: bindings read on connect, bounded set-up."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import uuid

import pytest
import sqlalchemy as sa

from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.errors import TenantUnavailable
from app.tenancy.serving.context import TenantContext
from app.tenancy.serving.engines import PoolSettings
from app.tenancy.serving.gateway import GatewayAccess, Gateways
from tests.support import FakeClock, Inspector, run_in_child

KEY = bytes(range(32))
POOL = PoolSettings(pool_size=1, max_overflow=0, pool_timeout=1, connect_timeout=2, io_timeout=5)


def test_gateway_access_never_shows_its_password_or_key() -> None:
    access = GatewayAccess("tp_gateway_x", sa.make_url("postgresql://g:s3cret@h/db"), KEY)
    assert "s3cret" not in repr(access)
    assert repr(KEY) not in repr(access)


def test_gateway_binding_is_the_backend_pid_and_a_number_of_its_own(
    shared_tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    """On a primary: ``<pid>:n<number>``, a number drawn for this backend, never twice."""
    sessions = [shared_tenancy.open_session(tenant_a.id) for _ in range(2)]  # two connections
    try:
        bindings = [session.connection().info["tenantpool.binding"] for session in sessions]
        pids = [session.scalar(sa.text("SELECT pg_backend_pid()")) for session in sessions]
    finally:
        for session in sessions:
            session.close()
    numbers = []
    for binding, pid in zip(bindings, pids, strict=True):
        found = re.fullmatch(r"(\d+):n(\d+)", binding)
        assert found is not None, binding
        assert int(found.group(1)) == pid
        numbers.append(int(found.group(2)))
    assert len(set(numbers)) == 2


def test_gateway_failed_set_up_is_not_retried_for_a_second() -> None:
    calls: list[str] = []

    def fetch(cluster: str) -> GatewayAccess:
        calls.append(cluster)
        raise ConnectionError("the cluster is down")

    clock = FakeClock()
    gateways = Gateways(fetch, POOL, size=1, statement_timeout_ms=1000, clock=clock)
    for _ in range(3):
        with pytest.raises(TenantUnavailable, match="cannot be set up"):
            gateways.session(TenantContext.of_tenant(uuid.uuid4()), "default", read_only=True)
    assert calls == ["default"]
    clock.advance(1.0)
    with pytest.raises(TenantUnavailable):
        gateways.session(TenantContext.of_tenant(uuid.uuid4()), "default", read_only=True)
    assert calls == ["default", "default"]


def test_gateway_concurrent_first_requests_set_up_one_pool(
    shared_tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    fetches: list[str] = []
    real = shared_tenancy.gateways._fetch

    def counting(cluster: str) -> GatewayAccess:
        fetches.append(cluster)
        return real(cluster)

    gateways = Gateways(counting, POOL, size=4, statement_timeout_ms=1000)
    errors: list[BaseException] = []

    def first_request() -> None:
        try:
            gateways.session(
                TenantContext.of_tenant(tenant_a.id), "default", read_only=True
            ).close()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gateways.dispose()
    assert errors == []
    assert fetches == ["default"]


def test_gateway_transaction_says_which_tenant_in_pg_stat_activity(
    shared_tenancy: Tenancy, tenant_a: ProvisionedTenant, inspect: Inspector
) -> None:
    session = shared_tenancy.open_session(tenant_a.id)
    try:
        pid = session.scalar(sa.text("SELECT pg_backend_pid()"))  # the transaction stays open
        seen = inspect.value(
            "default", "SELECT application_name FROM pg_stat_activity WHERE pid = %s", pid
        )
    finally:
        session.close()
    assert seen == f"tp:{tenant_a.id}:{os.getpid()}"


def test_gateway_pools_are_forgotten_in_a_forked_child(
    shared_tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    shared_tenancy.open_session(tenant_a.id).close()
    assert shared_tenancy.gateways.clusters() == ["default"]
    assert run_in_child(lambda: shared_tenancy.gateways.clusters() == []) == 0
    assert shared_tenancy.gateways.clusters() == ["default"]


@pytest.mark.parametrize(
    "poison",
    [
        "SELECT set_config('search_path', '', false)",
        "SET search_path = pg_temp",
        "SET DateStyle = 'SQL, DMY'",
        "SET TimeZone = 'Pacific/Chatham'",
        "SET default_transaction_read_only = on",
    ],
)
def test_gateway_session_state_a_tenant_sets_never_reaches_the_next(
    shared_tenancy: Tenancy,
    tenant_a: ProvisionedTenant,
    tenant_b: ProvisionedTenant,
    poison: str,
) -> None:
    """Injected SQL that changes the shared connection's session settings harms no later
    tenant: search_path is reset by every opening, a reported setting closes the connection."""
    gateways = Gateways(
        shared_tenancy.gateways._fetch,  # the app's own credentials and key
        POOL,  # one connection: tenant B gets the one tenant A changed, or a new one
        size=1,
        statement_timeout_ms=5000,
    )
    try:
        session = gateways.session(TenantContext.of_tenant(tenant_a.id), "default", read_only=False)
        settings = sa.text(
            "SELECT current_setting('DateStyle'), current_setting('TimeZone'), "
            "current_setting('search_path'), current_setting('default_transaction_read_only')"
        )
        try:
            before = session.execute(settings).one()
            session.commit()
            # Read-only by default looks like a failover to dbfailover, which fails tenant A's
            # own transaction and drops the connection at once.
            with contextlib.suppress(sa.exc.OperationalError):
                session.execute(sa.text(poison))
                session.commit()
        finally:
            session.close()
        session = gateways.session(TenantContext.of_tenant(tenant_b.id), "default", read_only=False)
        try:
            session.execute(sa.text("INSERT INTO users (first_name, last_name) VALUES ('B', 'B')"))
            seen = session.execute(sa.text("SELECT DISTINCT tenant_id FROM users")).scalars()
            assert list(seen) == [tenant_b.id]
            assert session.execute(settings).one() == before
            session.commit()
        finally:
            session.close()
    finally:
        gateways.dispose()
