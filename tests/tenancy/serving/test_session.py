"""Tenant sessions on a real cluster: the tenant setting rides with BEGIN and the first
statement (one message), is applied to every transaction, and never outlives one; a
read-only session sends one message per statement and nothing else; a pooled connection
the server closed is replaced at checkout, without a ping."""

from __future__ import annotations

import re

import psycopg2
import pytest
import sqlalchemy as sa
from psycopg2.extensions import TRANSACTION_STATUS_IDLE

from app.dev.cluster import LocalCluster
from app.models import User
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from tests.support import logged_since

CURRENT_TENANT = sa.text("SELECT current_setting('app.tenant_id', true)")


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
    logged = logged_since(pg_cluster, offset)
    assert len(logged) == 3, logged  # one message per statement + COMMIT; no ping
    first, second, third = logged
    assert re.match(r"SELECT set_config\('app\.tenant_sig', '[0-9a-f]{64}', true\), ", first)
    assert f"set_config('app.tenant_id', '{tenant_a.id}', true)" in first
    assert "; BEGIN; SELECT tenant_move_gate(); SELECT count(*)" in first
    # Every statement opens with the signed context: the verifier wants it at the start.
    assert second.startswith("SELECT set_config('app.tenant_sig', ")
    assert second.endswith("; SELECT 2")
    assert third.startswith("COMMIT; SELECT ")  # and the commit's WAL position, same message


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
    logged = logged_since(pg_cluster, offset)
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


def test_read_only_session_sends_one_message_per_statement_and_nothing_else(
    pg_cluster: LocalCluster,
    tenancy: Tenancy,
    tenant_a: ProvisionedTenant,
    statement_logging: None,
) -> None:
    session = tenancy.open_session(tenant_a.id, read_only=True)
    session.close()  # the engine and a pooled connection exist
    offset = pg_cluster.log_path.stat().st_size
    session = tenancy.open_session(tenant_a.id, read_only=True)
    try:
        assert session.scalar(CURRENT_TENANT) == str(tenant_a.id)
        assert session.scalar(sa.text("SHOW transaction_read_only")) == "on"
        session.commit()
    finally:
        session.close()
    logged = logged_since(pg_cluster, offset)
    closing = "set_config('transaction_read_only', 'on', true); SELECT tenant_move_gate(); "
    assert len(logged) == 2, logged
    for message, statement in zip(
        logged,
        ("SELECT current_setting('app.tenant_id', true)", "SHOW transaction_read_only"),
        strict=True,
    ):
        assert message.startswith("SELECT set_config('app.tenant_sig', ")
        assert f"set_config('app.tenant_id', '{tenant_a.id}', true)" in message
        assert message.endswith(closing + statement)


def test_read_only_session_cannot_write_and_leaves_nothing_behind(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    session = tenancy.open_session(tenant_a.id, read_only=True)
    try:
        with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
            session.execute(sa.insert(User).values(first_name="No", last_name="Write"))
        session.rollback()
        with pytest.raises(sa.exc.InvalidRequestError, match="read-only"):
            # Several parameter sets: a DB-API executemany, one transaction per row here.
            session.execute(sa.text("SELECT :n"), [{"n": 1}, {"n": 2}])
        session.rollback()
        assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 0
    finally:
        session.close()
    engine = tenancy.registry.get(tenant_a.id).engine
    with engine.connect() as connection:  # the same pooled connection, outside any session
        assert connection.scalar(CURRENT_TENANT) in ("", None)
        assert connection.scalar(sa.text("SHOW transaction_read_only")) == "off"


def test_read_only_session_sees_only_its_tenant(
    tenancy: Tenancy, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> None:
    writer = tenancy.open_session(tenant_b.id)
    try:
        writer.execute(sa.insert(User).values(first_name="Bea", last_name="B"))
        writer.commit()
    finally:
        writer.close()
    for tenant, expected in ((tenant_a, 0), (tenant_b, 1)):
        session = tenancy.open_session(tenant.id, read_only=True)
        try:
            assert session.scalar(sa.select(sa.func.count()).select_from(User)) == expected
        finally:
            session.close()


def test_pooled_connection_closed_by_the_server_is_replaced_without_an_error(
    pg_cluster: LocalCluster, tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    session = tenancy.open_session(tenant_a.id, read_only=True)
    first_pid = session.scalar(sa.text("SELECT pg_backend_pid()"))
    session.close()
    superuser = psycopg2.connect(pg_cluster.superuser_url("tenantpool"))
    try:
        superuser.autocommit = True
        with superuser.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s, 5000)", (first_pid,))
    finally:
        superuser.close()
    session = tenancy.open_session(tenant_a.id, read_only=True)
    try:
        second_pid = session.scalar(sa.text("SELECT pg_backend_pid()"))
    finally:
        session.close()
    assert second_pid != first_pid
