"""Tenant sessions on a real cluster: the tenant setting rides with BEGIN and the first
statement (one message), is applied to every transaction, and never outlives one."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg2
import pytest
import sqlalchemy as sa
from psycopg2.extensions import TRANSACTION_STATUS_IDLE

from app.devcluster import LocalCluster
from app.models import User
from app.tenancy import Tenancy
from app.tenancy.provisioning import ProvisionedTenant, role_name

CURRENT_TENANT = sa.text("SELECT current_setting('app.tenant_id', true)")


@pytest.fixture
def statement_logging(
    pg_cluster: LocalCluster, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> Iterator[None]:
    """Tenant A's new connections log every message they send (log_statement = all)."""
    role = role_name(tenant_a.id)
    superuser = psycopg2.connect(pg_cluster.superuser_url("tenantpool"))
    superuser.autocommit = True
    with superuser.cursor() as cursor:
        cursor.execute(f"ALTER ROLE \"{role}\" SET log_statement = 'all'")
    tenancy.forget(tenant_a.id, "test")  # new connections pick the role setting up
    yield
    with superuser.cursor() as cursor:
        cursor.execute(f'ALTER ROLE "{role}" RESET log_statement')
    superuser.close()


def _logged(pg_cluster: LocalCluster, offset: int) -> list[str]:
    time.sleep(0.2)  # the logger writes asynchronously to the file
    with pg_cluster.log_path.open(errors="replace") as handle:
        handle.seek(offset)
        return [line.split(" statement: ", 1)[1] for line in handle if " statement: " in line]


def test_session_tenant_setting_travels_with_begin_and_first_statement(
    pg_cluster: LocalCluster,
    tenancy: Tenancy,
    tenant_a: ProvisionedTenant,
    statement_logging: None,
) -> None:
    session = tenancy.open_session(tenant_a.id)
    session.scalar(sa.select(sa.func.count()).select_from(User))  # creates the engine
    session.close()
    offset = pg_cluster.log_path.stat().st_size
    session = tenancy.open_session(tenant_a.id)
    session.scalar(sa.select(sa.func.count()).select_from(User))
    session.scalar(sa.text("SELECT 2"))
    session.commit()
    session.close()
    logged = [line for line in _logged(pg_cluster, offset) if line.strip() != "SELECT 1"]
    assert len(logged) == 3, logged  # pool pre-ping aside: one message per statement + COMMIT
    first, second, third = logged
    assert first.startswith(
        f"BEGIN; SELECT set_config('app.tenant_id', '{tenant_a.id}', true), "
        "tenant_move_gate(); SELECT count(*)"
    )
    assert second.strip() == "SELECT 2"
    assert third.strip() == "COMMIT"


def test_session_setting_applies_to_every_transaction(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    session = tenancy.open_session(tenant_a.id)
    try:
        assert session.scalar(CURRENT_TENANT) == str(tenant_a.id)
        session.commit()
        assert session.scalar(CURRENT_TENANT) == str(tenant_a.id)
        session.rollback()
        assert session.scalar(CURRENT_TENANT) == str(tenant_a.id)
    finally:
        session.close()


def test_session_setting_does_not_outlive_its_transaction(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    tenancy.forget(tenant_a.id, "test")
    session = tenancy.open_session(tenant_a.id)
    assert session.scalar(CURRENT_TENANT) == str(tenant_a.id)
    session.commit()
    session.close()
    engine = tenancy.registry.get(tenant_a.id).engine
    assert engine.pool.checkedin() == 1  # the next checkout gets that very connection
    with engine.connect() as connection:
        assert connection.scalar(CURRENT_TENANT) in ("", None)


def test_session_connection_returned_mid_transaction_is_rolled_back(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    engine = tenancy.registry.get(tenant_a.id).engine
    connection = engine.connect()
    connection.execute(sa.text("SELECT 1"))
    raw = connection.connection.dbapi_connection
    assert raw is not None
    assert raw.get_transaction_status() != TRANSACTION_STATUS_IDLE
    connection.close()  # back to the pool without commit or rollback
    assert raw.get_transaction_status() == TRANSACTION_STATUS_IDLE


def test_session_failed_statement_rolls_back_and_next_transaction_works(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    session = tenancy.open_session(tenant_a.id)
    try:
        with pytest.raises(sa.exc.DataError):
            session.scalar(sa.text("SELECT 1 / 0"))
        session.rollback()
        assert session.scalar(CURRENT_TENANT) == str(tenant_a.id)
    finally:
        session.close()


def test_session_rollback_discards_writes(tenancy: Tenancy, tenant_a: ProvisionedTenant) -> None:
    session = tenancy.open_session(tenant_a.id)
    try:
        session.execute(sa.insert(User).values(first_name="Gone", last_name="Soon"))
        session.rollback()
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 0
    finally:
        session.close()


def test_session_new_engine_does_not_ask_what_the_server_already_told(
    pg_cluster: LocalCluster,
    tenancy: Tenancy,
    tenant_a: ProvisionedTenant,
    tenant_b: ProvisionedTenant,
    statement_logging: None,
) -> None:
    session = tenancy.open_session(tenant_b.id)  # some engine has met this server
    session.close()
    offset = pg_cluster.log_path.stat().st_size
    session = tenancy.open_session(tenant_a.id)  # a new engine: first connect
    try:
        assert session.scalar(CURRENT_TENANT) == str(tenant_a.id)
    finally:
        session.close()
    logged = _logged(pg_cluster, offset)
    assert not [line for line in logged if "version()" in line or "show " in line.lower()], logged


def test_session_engine_refuses_a_dbapi_isolation_level(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    engine = tenancy.registry.get(tenant_a.id).engine
    with (
        engine.connect() as connection,
        pytest.raises(NotImplementedError, match="SET TRANSACTION"),
    ):
        connection.execution_options(isolation_level="SERIALIZABLE")
