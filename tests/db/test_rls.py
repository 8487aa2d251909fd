"""Row Level Security on a real PostgreSQL, connected as tenant roles (never a superuser).

Each test tries to break one isolation rule of DESIGN section 3 and must fail to.
"""

from __future__ import annotations

import uuid

import psycopg2
import pytest
import sqlalchemy as sa

from app.crypto import DecryptError, tenant_aad
from app.models import Tenant, User
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.control.roles import remove_placement, role_name

SET_TENANT = "SELECT set_config('app.tenant_id', %(tid)s, false)"


def _add_users(tenancy: Tenancy, tenant: ProvisionedTenant, count: int) -> None:
    session = tenancy.open_session(tenant.id)
    with session.begin():
        session.execute(
            sa.insert(User), [{"first_name": f"n{i}", "last_name": "x"} for i in range(count)]
        )
    session.close()


def _tenant_engine(tenancy: Tenancy, tenant: ProvisionedTenant) -> sa.Engine:
    return tenancy.registry.get(tenant.id).engine


def _count_users(connection: sa.Connection) -> int:
    return connection.execute(sa.text("SELECT count(*) FROM users")).scalar_one()


@pytest.fixture
def two_tenants_with_rows(
    tenancy: Tenancy, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> tuple[ProvisionedTenant, ProvisionedTenant]:
    _add_users(tenancy, tenant_a, 3)
    _add_users(tenancy, tenant_b, 2)
    return tenant_a, tenant_b


def test_rls_tenant_sees_only_its_own_rows(
    serving_tenancy: Tenancy, two_tenants_with_rows: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    tenant_a, tenant_b = two_tenants_with_rows
    for tenant, expected in ((tenant_a, 3), (tenant_b, 2)):
        session = serving_tenancy.open_session(tenant.id)
        owners = session.scalars(sa.select(User.tenant_id)).all()
        session.close()
        assert len(owners) == expected
        assert set(owners) == {tenant.id}


@pytest.mark.parametrize(
    "setting",
    [None, "", "other"],
    ids=["unset", "empty", "another-tenant"],
)
def test_rls_without_matching_tenant_setting_sees_nothing(
    tenancy: Tenancy,
    two_tenants_with_rows: tuple[ProvisionedTenant, ProvisionedTenant],
    setting: str | None,
) -> None:
    tenant_a, tenant_b = two_tenants_with_rows
    with _tenant_engine(tenancy, tenant_a).connect() as connection:
        if setting is not None:
            value = str(tenant_b.id) if setting == "other" else setting
            connection.exec_driver_sql(SET_TENANT, {"tid": value})
        assert _count_users(connection) == 0
        connection.rollback()


def test_rls_tenant_cannot_insert_rows_for_another_tenant(
    serving_tenancy: Tenancy, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> None:
    session = serving_tenancy.open_session(tenant_a.id)
    with pytest.raises(sa.exc.ProgrammingError, match="row-level security"):
        session.execute(
            sa.insert(User).values(first_name="x", last_name="y", tenant_id=tenant_b.id)
        )
    session.close()


def test_rls_tenant_cannot_move_its_rows_to_another_tenant(
    serving_tenancy: Tenancy, two_tenants_with_rows: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    tenant_a, tenant_b = two_tenants_with_rows
    session = serving_tenancy.open_session(tenant_a.id)
    with pytest.raises(sa.exc.ProgrammingError, match="row-level security"):
        session.execute(sa.update(User).values(tenant_id=tenant_b.id))
    session.close()


def test_rls_tenant_cannot_read_tenants_table(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    with (
        _tenant_engine(tenancy, tenant_a).connect() as connection,
        pytest.raises(sa.exc.ProgrammingError, match="permission denied"),
    ):
        connection.execute(sa.select(Tenant.db_password_encrypted))


def test_rls_owner_sees_no_tenant_rows(
    tenancy: Tenancy, two_tenants_with_rows: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    tenant_a, _ = two_tenants_with_rows
    with tenancy.control_engine.connect() as connection:
        connection.exec_driver_sql(SET_TENANT, {"tid": str(tenant_a.id)})
        assert _count_users(connection) == 0
        connection.rollback()


def test_rls_tenant_role_is_not_privileged(tenancy: Tenancy, tenant_a: ProvisionedTenant) -> None:
    query = sa.text(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolconnlimit, "
        "EXISTS (SELECT FROM pg_class c WHERE c.relowner = r.oid) AS owns_tables "
        "FROM pg_roles r WHERE rolname = :role"
    )
    with tenancy.control_engine.connect() as connection:
        row = connection.execute(query, {"role": role_name(tenant_a.id)}).one()
    assert not row.rolsuper
    assert not row.rolbypassrls
    assert not row.rolcreaterole
    assert not row.rolcreatedb
    assert not row.owns_tables
    assert row.rolconnlimit == tenancy.limits.connection_limit


def test_rls_tenant_role_has_statement_timeout(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    with _tenant_engine(tenancy, tenant_a).connect() as connection:
        timeout = connection.exec_driver_sql(
            "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'"
        ).scalar_one()
    assert int(timeout) == tenancy.limits.statement_timeout_ms


def test_rls_current_tenant_id_derives_from_role_name(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    with _tenant_engine(tenancy, tenant_a).connect() as connection:
        derived = connection.execute(sa.text("SELECT current_tenant_id()")).scalar_one()
    with tenancy.control_engine.connect() as connection:
        owner_execute = connection.execute(
            sa.text("SELECT has_function_privilege('current_tenant_id()', 'execute')")
        ).scalar_one()
    assert derived == tenant_a.id
    assert owner_execute  # the owner owns it; its own role name yields NULL, not a tenant


def test_rls_tenant_role_cannot_set_role_to_another_tenant(
    tenancy: Tenancy, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> None:
    with (
        _tenant_engine(tenancy, tenant_a).connect() as connection,
        pytest.raises(sa.exc.ProgrammingError, match="permission denied"),
    ):
        connection.exec_driver_sql(f'SET ROLE "{role_name(tenant_b.id)}"')


def _tenant_url(tenancy: Tenancy, tenant: ProvisionedTenant, password: str) -> sa.URL:
    base = sa.make_url(str(tenancy.control_engine.url.render_as_string(hide_password=False)))
    return base.set(username=role_name(tenant.id), password=password)


def test_rls_wrong_password_fails_to_connect(tenancy: Tenancy, tenant_a: ProvisionedTenant) -> None:
    url = _tenant_url(tenancy, tenant_a, "not-the-password")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(
            host=url.host,
            port=url.port,
            dbname=url.database,
            user=url.username,
            password=url.password,
        )


def test_rls_stored_password_logs_in_through_scram_verifier(
    tenancy: Tenancy, tenant_a: ProvisionedTenant
) -> None:
    with tenancy.control_engine.connect() as connection:
        token = connection.execute(
            sa.select(Tenant.db_password_encrypted).where(Tenant.id == tenant_a.id)
        ).scalar_one()
    password = tenancy.keyring.decrypt_str(token, tenant_aad(tenant_a.id, role_name(tenant_a.id)))
    url = _tenant_url(tenancy, tenant_a, password)
    connection = psycopg2.connect(
        host=url.host, port=url.port, dbname=url.database, user=url.username, password=url.password
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone() == (role_name(tenant_a.id),)
    finally:
        connection.close()


def test_rls_swapped_ciphertext_fails_to_decrypt(
    tenancy: Tenancy, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> None:
    with tenancy.control_engine.connect() as connection:
        token_a = connection.execute(
            sa.select(Tenant.db_password_encrypted).where(Tenant.id == tenant_a.id)
        ).scalar_one()
    with pytest.raises(DecryptError):
        tenancy.keyring.decrypt(token_a, tenant_aad(tenant_b.id, role_name(tenant_b.id)))


def test_rls_removing_placement_cascades_to_its_rows(
    tenancy: Tenancy, two_tenants_with_rows: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    tenant_a, tenant_b = two_tenants_with_rows
    # As the owner, who cannot read the rows (FORCE RLS): the cascade is not subject to it.
    assert remove_placement(tenancy.clusters.engine("default"), tenant_a.id, drop_role=False)
    # The role still exists (drop_role=False); its rows are gone.
    with _tenant_engine(tenancy, tenant_a).connect() as connection:
        connection.exec_driver_sql(SET_TENANT, {"tid": str(tenant_a.id)})
        assert _count_users(connection) == 0
        connection.rollback()
    session = tenancy.open_session(tenant_b.id)
    assert session.scalar(sa.select(sa.func.count()).select_from(User)) == 2
    session.close()


def test_rls_policy_uses_tenant_index(
    serving_tenancy: Tenancy, two_tenants_with_rows: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    tenant_a, _ = two_tenants_with_rows
    session = serving_tenancy.open_session(tenant_a.id)
    session.execute(sa.text("SET LOCAL enable_seqscan = off"))
    plan = "\n".join(
        session.execute(sa.text("EXPLAIN SELECT * FROM users ORDER BY created_at")).scalars()
    )
    session.close()
    # Any (tenant_id, ...) index will do (migration 0005 added one per sort column, 0004 a key):
    # the policy's tenant side becomes its index condition.
    assert "Index Cond: (tenant_id = $" in plan, plan
    assert "_users_tenant_id_" in plan, plan  # an ix_ or the uq_ (tenant_id, id) key


def test_rls_policy_is_one_initplan_per_statement(
    serving_tenancy: Tenancy, two_tenants_with_rows: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    """Role, request and context are checked in one sub-select (migration 0011): one
    InitPlan, evaluated once, and nothing left to check row by row."""
    tenant_a, _ = two_tenants_with_rows
    session = serving_tenancy.open_session(tenant_a.id)
    plan = "\n".join(
        session.execute(sa.text("EXPLAIN SELECT * FROM users ORDER BY created_at")).scalars()
    )
    session.close()
    assert plan.count("InitPlan") == 1, plan
    assert "Filter:" not in plan, plan


def test_rls_unknown_uuid_in_setting_sees_nothing(
    tenancy: Tenancy, two_tenants_with_rows: tuple[ProvisionedTenant, ProvisionedTenant]
) -> None:
    tenant_a, _ = two_tenants_with_rows
    with _tenant_engine(tenancy, tenant_a).connect() as connection:
        connection.exec_driver_sql(SET_TENANT, {"tid": str(uuid.uuid4())})
        assert _count_users(connection) == 0
        connection.rollback()
