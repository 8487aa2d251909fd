"""``flask tenancy check`` on databases of their own, each broken in one way on purpose.

Per-database objects (tables, policies, grants, functions, views) are broken inside a
transaction that the check then reads and that is rolled back. Role attributes are
cluster-wide, so those tests use a cluster of their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest
import sqlalchemy as sa
from click.testing import Result

from app.crypto import Keyring
from app.dev.cluster import LocalCluster
from app.tenancy.control.checks import CheckResult, check_isolation
from app.tenancy.control.clusters import Clusters
from app.tenancy.control.context_sql import user_scoped_ddl
from app.tenancy.control.ddl import (
    THREE_TERM_PREDICATE,
    tenant_reference_ddl,
    tenant_scoped_ddl,
)
from app.tenancy.control.provisioning import create_tenant
from app.tenancy.control.roles import RoleLimits, role_name
from config import load_settings
from tests.conftest import ClusterFactory, FreshDatabase
from tests.support import app_for, invoke, tenant_tables

LIMITS = RoleLimits(connection_limit=5, statement_timeout_ms=5000, scram_iterations=64)


@pytest.fixture(scope="module")
def fresh_engine(fresh_database: FreshDatabase) -> Iterator[sa.Engine]:
    """The owner's engine on a new, migrated database of the suite's cluster.

    Shared by the module: every test's changes are rolled back.
    """
    engine = sa.create_engine(fresh_database()["APP_DATABASE_URL"])
    yield engine
    engine.dispose()


def _check_after(engine: sa.Engine, *statements: str) -> CheckResult:
    """The check's findings with ``statements`` applied, then rolled back."""
    with engine.connect() as connection:
        for statement in statements:
            connection.exec_driver_sql(statement)
        result = check_isolation(connection)
        connection.rollback()
    return result


def test_checks_pass_on_a_fresh_install(fresh_engine: sa.Engine) -> None:
    result = _check_after(fresh_engine)
    assert result.problems == []
    assert result.tenant_tables == len(tenant_tables())
    assert result.user_scoped_tables == 2  # orders, idempotency_keys


def test_checks_pass_for_a_table_made_user_scoped_by_the_helper(fresh_engine: sa.Engine) -> None:
    result = _check_after(
        fresh_engine,
        "CREATE TABLE notes (id int PRIMARY KEY, created_at timestamptz)",
        *tenant_scoped_ddl("notes"),
        *user_scoped_ddl("notes"),
    )
    assert result.problems == []
    assert result.user_scoped_tables == 3


@pytest.mark.parametrize(
    ("statements", "problems"),
    [
        (  # the policy dropped: the column says whose a row is, nothing enforces it
            ["DROP POLICY user_rows ON orders"],
            ["table orders: has created_by but no user_rows policy: every user sees every row"],
        ),
        (  # permissive: it would widen the tenant's policy to every row of every user
            [
                "DROP POLICY user_rows ON orders",
                "CREATE POLICY user_rows ON orders AS PERMISSIVE FOR ALL TO tenant_base "
                "USING (created_by = (SELECT current_app_user()) OR "
                "(SELECT current_app_is_admin()))",
            ],
            [
                "table orders: permissive policy user_rows widens tenant_isolation "
                "(make it RESTRICTIVE or drop it)",
                "table orders: policy user_rows must be RESTRICTIVE FOR ALL",
            ],
        ),
        (  # a bare setting instead of the verified user
            [
                "DROP POLICY user_rows ON orders",
                "CREATE POLICY user_rows ON orders AS RESTRICTIVE FOR ALL TO tenant_base "
                "USING (created_by = current_setting('app.user_id', true))",
            ],
            [
                "table orders: policy user_rows USING does not reference current_app_user() "
                "and current_app_is_admin()",
                "table orders: policy user_rows WITH CHECK does not reference "
                "current_app_user() and current_app_is_admin()",
            ],
        ),
        (  # any user passes: the functions are named, no row's owner is compared
            [
                "DROP POLICY user_rows ON orders",
                "CREATE POLICY user_rows ON orders AS RESTRICTIVE FOR ALL TO tenant_base "
                "USING ((SELECT current_app_is_admin()) OR "
                "(SELECT current_app_user()) IS NOT NULL)",
            ],
            ["table orders: policy user_rows compares no column of the table"],
        ),
        (
            ["ALTER TABLE orders ALTER COLUMN created_by DROP DEFAULT"],
            ["table orders: created_by does not default to current_app_user()"],
        ),
        (  # a function that trusts the setting: anyone could claim any user
            [
                "CREATE OR REPLACE FUNCTION current_app_user() RETURNS text LANGUAGE sql "
                "STABLE AS $$ SELECT current_setting('app.user_id', true) $$"
            ],
            ["function current_app_user() does not ask the verifier: its answer is forgeable"],
        ),
        (
            ["GRANT EXECUTE ON FUNCTION current_app_roles() TO PUBLIC"],
            ["function current_app_roles() is executable by PUBLIC"],
        ),
    ],
    ids=[
        "no-policy",
        "permissive",
        "bare-setting",
        "no-column",
        "no-default",
        "forgeable",
        "public",
    ],
)
def test_checks_name_each_broken_user_scope_rule(
    fresh_engine: sa.Engine, statements: list[str], problems: list[str]
) -> None:
    assert _check_after(fresh_engine, *statements).problems == problems


def test_checks_pass_for_a_table_made_tenant_scoped_by_the_helper(fresh_engine: sa.Engine) -> None:
    result = _check_after(
        fresh_engine,
        "CREATE TABLE invoices (id int PRIMARY KEY, created_at timestamptz)",
        *tenant_scoped_ddl("invoices"),
    )
    assert result.problems == []
    assert result.tenant_tables == len(tenant_tables()) + 1


def test_checks_name_a_tenant_table_without_rls_policy_or_index(fresh_engine: sa.Engine) -> None:
    result = _check_after(
        fresh_engine,
        "CREATE TABLE invoices (id int, tenant_id uuid NOT NULL "
        "REFERENCES tenant_placements ON DELETE CASCADE)",
        "GRANT SELECT ON invoices TO tenant_base",
    )
    assert result.problems == [
        "table invoices: row level security is not enabled",
        "table invoices: row level security is not forced (the owner would bypass it)",
        "table invoices: has no tenant_isolation policy",
        "table invoices: no index starts with tenant_id",
        "table invoices: has no UNIQUE (tenant_id, id), which tenant references point at; "
        "ALTER TABLE invoices ADD CONSTRAINT uq_invoices_tenant_id_id UNIQUE (tenant_id, id) "
        "(make_tenant_scoped adds it to new tables)",
    ]


_INVOICES = (
    "CREATE TABLE invoices (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
    "user_id uuid NOT NULL{reference}, created_at timestamptz)"
)


def test_checks_pass_for_a_tenant_reference_made_by_the_helper(fresh_engine: sa.Engine) -> None:
    result = _check_after(
        fresh_engine,
        _INVOICES.format(reference=""),
        *tenant_scoped_ddl("invoices"),
        *tenant_reference_ddl("invoices", "user_id", "users", on_delete="CASCADE"),
    )
    assert result.problems == []


def test_checks_name_a_single_column_reference_between_tenant_tables(
    fresh_engine: sa.Engine,
) -> None:
    # The natural REFERENCES users (id) would let a tenant's invoice name another
    # tenant's user: foreign-key checks bypass RLS.
    result = _check_after(
        fresh_engine,
        _INVOICES.format(reference=" REFERENCES users (id)"),
        *tenant_scoped_ddl("invoices"),
    )
    assert result.problems == [
        "table invoices: foreign key invoices_user_id_fkey (user_id) references users (id) "
        "without pairing tenant_id, so a row can name another tenant's row (foreign-key "
        "checks bypass row level security); make it (tenant_id, user_id) REFERENCES users "
        '(tenant_id, id): tenant_reference(op, "invoices", "user_id", "users") in a migration'
    ]


def test_checks_name_a_reference_pairing_tenant_id_with_another_column(
    fresh_engine: sa.Engine,
) -> None:
    result = _check_after(
        fresh_engine,
        _INVOICES.format(reference=""),
        *tenant_scoped_ddl("invoices"),
        "ALTER TABLE invoices ADD CONSTRAINT crossed FOREIGN KEY (user_id, tenant_id) "
        "REFERENCES users (tenant_id, id)",
    )
    assert len(result.problems) == 1
    assert result.problems[0].startswith(
        "table invoices: foreign key crossed (user_id, tenant_id) references users "
        "(tenant_id, id) without pairing tenant_id"
    )


@pytest.mark.parametrize(
    ("statements", "problem"),
    [
        (
            [
                "DROP POLICY tenant_isolation ON users",
                "CREATE POLICY tenant_isolation ON users TO tenant_base "
                "USING (tenant_id = (SELECT current_tenant_id()))",
            ],
            "table users: policy tenant_isolation USING does not reference 'app.tenant_id' and "
            "SESSION_USER and tp_private.tenant_context_ok()\n"
            "table users: policy tenant_isolation WITH CHECK does not reference 'app.tenant_id' "
            "and SESSION_USER and tp_private.tenant_context_ok()",
        ),
        (
            [
                "DROP POLICY tenant_isolation ON users",
                "CREATE POLICY tenant_isolation ON users TO tenant_base "
                "USING (tenant_id = (SELECT current_tenant_id()) AND tenant_id = "
                "NULLIF(current_setting('app.tenant_id', true), '')::uuid) "
                "WITH CHECK (tenant_id IS NOT NULL)",
            ],
            "table users: policy tenant_isolation USING does not reference SESSION_USER and "
            "tp_private.tenant_context_ok()\n"
            "table users: policy tenant_isolation WITH CHECK does not reference "
            "current_tenant_id() and 'app.tenant_id' and SESSION_USER and "
            "tp_private.tenant_context_ok()",
        ),
        (
            ["CREATE POLICY everyone ON users TO tenant_base USING (true)"],
            "table users: permissive policy everyone widens tenant_isolation "
            "(make it RESTRICTIVE or drop it)",
        ),
        (
            ["ALTER TABLE products NO FORCE ROW LEVEL SECURITY"],
            "table products: row level security is not forced (the owner would bypass it)",
        ),
        (
            ["REVOKE SELECT ON products FROM tenant_base"],
            "table products: tenant_base has no SELECT on it",
        ),
        (
            ["GRANT TRUNCATE ON users TO tenant_base"],
            "table users: tenant_base has TRUNCATE on it, which row level security does not cover",
        ),
        (
            ["GRANT SELECT ON users TO PUBLIC"],
            "table users: PUBLIC has SELECT on it\n"
            "gateway role {gateway}: has privileges on users (it must have none)",
        ),
        (["GRANT SELECT ON tenants TO tenant_base"], "role tenant_base: has SELECT on tenants"),
        (
            [
                "CREATE FUNCTION leak() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
                "AS 'SELECT count(*) FROM users'",
                "REVOKE EXECUTE ON FUNCTION leak() FROM PUBLIC",
            ],
            "SECURITY DEFINER function leak(): search_path is not pinned",
        ),
        (
            [
                "CREATE FUNCTION leak() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
                "SET search_path = pg_catalog, public AS 'SELECT count(*) FROM public.users'"
            ],
            "SECURITY DEFINER function leak(): PUBLIC may execute it",
        ),
        (
            [
                "CREATE VIEW all_users AS SELECT id FROM users",
                "CREATE VIEW all_users_again WITH (security_invoker) AS SELECT * FROM all_users",
            ],
            "view all_users: reads tenant tables without security_invoker (it would run with "
            "its owner's rights)",
        ),
        (
            ["CREATE MATERIALIZED VIEW user_count AS SELECT count(*) FROM users"],
            "materialized view user_count: holds tenant rows where row level security cannot "
            "protect them",
        ),
        (
            ['ALTER ROLE "{gateway}" INHERIT'],
            "gateway role {gateway}: is INHERIT: it would hold every tenant's privileges",
        ),
        (
            ['GRANT tenant_base TO "{gateway}"'],
            "gateway role {gateway}: is a member of tenant_base (only tenant roles)",
        ),
        (
            ['REVOKE "{gateway}" FROM CURRENT_USER'],
            "gateway role {gateway}: the owner is not a member of it, so the verifier cannot "
            "read its backends",
        ),
        (
            ["GRANT SELECT ON tp_private.context TO tenant_base"],
            "table tp_private.context: tenant_base may read the signing key",
        ),
        (
            ["DELETE FROM tp_private.context"],
            "table tp_private.context: must hold one 32-byte signing key",
        ),
        (
            ["REVOKE EXECUTE ON FUNCTION tp_private.tenant_context_ok() FROM tenant_base"],
            "function tp_private.tenant_context_ok(): tenant_base may not execute it: every "
            "policy would fail",
        ),
        (
            ['GRANT EXECUTE ON FUNCTION tp_private.tenant_context_ok() TO "{gateway}"'],
            "function tp_private.tenant_context_ok(): {gateway} may execute it",
        ),
        (
            ['REVOKE EXECUTE ON FUNCTION tp_private.backend_binding() FROM "{gateway}"'],
            "function tp_private.backend_binding(): {gateway} may not execute it: no shared "
            "connection could be bound",
        ),
        (
            ["ALTER FUNCTION tp_private.backend_binding() SECURITY INVOKER"],
            "function tp_private.backend_binding(): is not SECURITY DEFINER: the gateway could "
            "not draw a number",
        ),
        (
            [
                "GRANT USAGE ON SEQUENCE tp_private.backend_nonces TO tenant_base",
                'GRANT UPDATE ON SEQUENCE tp_private.backend_nonces TO "{gateway}"',
            ],
            "sequence tp_private.backend_nonces: tenant_base may use it (only its owner may)\n"
            "sequence tp_private.backend_nonces: {gateway} may use it (only its owner may)",
        ),
        (
            ["DROP SEQUENCE tp_private.backend_nonces"],
            "sequence tp_private.backend_nonces: does not exist (run flask db upgrade)",
        ),
    ],
    ids=[
        "using-misses-request",
        "with-check-misses-both",
        "extra-permissive-policy",
        "not-forced",
        "no-grant",
        "truncate",
        "public-grant",
        "tenants-readable",
        "definer-search-path",
        "definer-public",
        "view-not-invoker",
        "materialized-view",
        "gateway-inherits",
        "gateway-in-tenant-base",
        "owner-not-in-gateway",
        "key-readable",
        "key-missing",
        "verifier-not-for-tenants",
        "verifier-for-gateway",
        "binding-not-for-gateway",
        "binding-not-definer",
        "numbers-usable",
        "numbers-missing",
    ],
)
def test_checks_name_each_broken_rule(
    fresh_engine: sa.Engine, statements: list[str], problem: str
) -> None:
    with fresh_engine.connect() as connection:
        gateway = connection.scalar(sa.text("SELECT gateway_role FROM tp_private.context"))
    found = _check_after(fresh_engine, *(s.format(gateway=gateway) for s in statements))
    assert found.problems == problem.format(gateway=gateway).split("\n")


def test_checks_accept_the_policy_as_migration_0003_made_it(fresh_engine: sa.Engine) -> None:
    """A table whose policy still calls current_tenant_id() (0003's three terms) is isolated
    too: the role side may be the function or its body (0011)."""
    result = _check_after(
        fresh_engine,
        f"ALTER POLICY tenant_isolation ON users USING ({THREE_TERM_PREDICATE}) "
        f"WITH CHECK ({THREE_TERM_PREDICATE})",
    )
    assert result.problems == []


def test_checks_accept_views_with_security_invoker(fresh_engine: sa.Engine) -> None:
    result = _check_after(
        fresh_engine,
        "CREATE VIEW my_users WITH (security_invoker = on) AS SELECT id FROM users",
        "CREATE VIEW my_users_again WITH (security_invoker) AS SELECT * FROM my_users",
    )
    assert result.problems == []


def _tenant_in(env: dict[str, str], name: str) -> tuple[sa.Engine, str]:
    settings = load_settings(env)
    engine = sa.create_engine(settings.database_url)
    keyring = Keyring(settings.encryption_keys, settings.encryption_active_key)
    tenant = create_tenant(Clusters.single(engine), keyring, name, LIMITS)
    return engine, role_name(tenant.id)


def _as_superuser(cluster: LocalCluster, env: dict[str, str], *statements: str) -> None:
    database = sa.make_url(env["APP_DATABASE_URL"]).database
    connection = psycopg2.connect(cluster.superuser_url(database or "postgres"))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()


ROLE_BREAKS = [
    ('ALTER ROLE "{role}" BYPASSRLS', "tenant role {role}: has BYPASSRLS"),
    ('ALTER ROLE "{role}" SUPERUSER', "tenant role {role}: is SUPERUSER"),
    ('ALTER ROLE "{role}" CREATEROLE', "tenant role {role}: has CREATEROLE"),
    ('REVOKE tenant_base FROM "{role}"', "tenant role {role}: is not a member of tenant_base"),
    # Not the owner: it is a member of the gateway, itself a member of every tenant role,
    # so PostgreSQL refuses the circle.
    ('GRANT pg_read_all_data TO "{role}"', "tenant role {role}: is a member of pg_read_all_data"),
    ('ALTER TABLE users OWNER TO "{role}"', "tenant role {role}: owns objects"),
]


def test_checks_name_every_privileged_tenant_role(
    cluster_factory: ClusterFactory, fresh_database: FreshDatabase
) -> None:
    # Roles are cluster-wide: these are changed on a cluster of this test's own.
    cluster = cluster_factory()
    env = fresh_database(cluster)
    owner = sa.make_url(env["APP_DATABASE_URL"]).username
    engine, _ = _tenant_in(env, "innocent")
    try:
        assert _check_after(engine).problems == []
        expected = ["role tenant_base: BYPASSRLS"]
        statements = ["ALTER ROLE tenant_base BYPASSRLS"]
        for number, (statement, problem) in enumerate(ROLE_BREAKS):
            _, role = _tenant_in(env, f"broken-{number}")
            statements.append(statement.format(role=role, owner=owner))
            expected.append(problem.format(role=role, owner=owner))
        _as_superuser(cluster, env, *statements)
        assert sorted(_check_after(engine).problems) == sorted(expected)
    finally:
        engine.dispose()


def _cli(env: dict[str, str], *args: str) -> Result:
    with app_for(env) as app:
        return invoke(app, *args)


def test_checks_command_exits_zero_on_a_fresh_install(fresh_database: FreshDatabase) -> None:
    result = _cli(fresh_database(), "tenancy", "check")
    assert result.exit_code == 0, result.output
    tables = len(tenant_tables())
    assert f"tenant isolation check passed: {tables} tenant table(s) (2 user-scoped)" in (
        result.output
    )


def test_checks_command_fails_naming_a_table_with_a_single_column_reference_to_users(
    fresh_database: FreshDatabase,
) -> None:
    env = fresh_database()
    engine = sa.create_engine(env["APP_DATABASE_URL"])
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(_INVOICES.format(reference=" REFERENCES users (id)"))
            for statement in tenant_scoped_ddl("invoices"):
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()
    result = _cli(env, "tenancy", "check")
    assert result.exit_code == 1
    assert "table invoices: foreign key invoices_user_id_fkey (user_id) references users" in (
        result.output
    )
    assert "tenant isolation check failed: 1 problem(s)" in result.output


def test_checks_command_lists_problems_and_exits_non_zero(
    fresh_database: FreshDatabase,
) -> None:
    env = fresh_database()
    engine = sa.create_engine(env["APP_DATABASE_URL"])
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE notes (tenant_id uuid)")
    finally:
        engine.dispose()
    result = _cli(env, "tenancy", "check")
    assert result.exit_code == 1
    assert "table notes: has no tenant_isolation policy" in result.output
    assert "tenant isolation check failed" in result.output


def test_checks_command_fails_for_a_bypassrls_tenant_role(
    cluster_factory: ClusterFactory, fresh_database: FreshDatabase
) -> None:
    cluster = cluster_factory()
    env = fresh_database(cluster)
    engine, role = _tenant_in(env, "bypassing")
    engine.dispose()
    _as_superuser(cluster, env, f'ALTER ROLE "{role}" BYPASSRLS')
    result = _cli(env, "tenancy", "check")
    assert result.exit_code == 1
    assert f"tenant role {role}: has BYPASSRLS" in result.output
