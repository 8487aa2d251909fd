"""docker/postgres/initdb and compose's PgBouncer settings, on a real cluster and a real pgbouncer.

The init script runs as in the postgres container (psql as the superuser, passwords from the
environment); the migrations then run as the owner it made, and a tenant is provisioned as the
app does it. The last test logs that tenant in through a pgbouncer configured from
compose.yaml's own environment (auth_query through ``pgbouncer.get_auth``, SCRAM, transaction
mode): the path of every tenant request in the compose deployment.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import errors

from app.crypto import Keyring
from app.db import create_control_engine
from app.dev.cluster import LocalCluster
from app.dev.pgbouncer import INSTALL_HINT, LocalPgBouncer, find_pgbouncer
from app.tenancy.control.clusters import Clusters
from app.tenancy.control.provisioning import create_tenant
from app.tenancy.control.roles import RoleLimits, role_name
from config import load_settings
from tests.conftest import throwaway_cluster, upgrade_database
from tests.support import (
    INIT_SCRIPT,
    compose_pgbouncer,
    run_compose_init_script,
    run_initdb_script,
    tenant_passwords,
)


@dataclass(frozen=True)
class Initialized:
    """A cluster after the init script and the migrations, with one provisioned tenant."""

    cluster: LocalCluster
    owner_url: str
    bouncer_password: str
    tenant_role: str
    tenant_password: str

    def url(self, user: str, password: str, port: int | None = None) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{port or self.cluster.port}/tenantpool"


@pytest.fixture(scope="module")
def initialized(app_env: dict[str, str]) -> Iterator[Initialized]:
    """One cluster for the module: the tests only read it (or fail to change it)."""
    with throwaway_cluster() as cluster:
        yield _initialize(cluster, app_env)


def _initialize(cluster: LocalCluster, app_env: dict[str, str]) -> Initialized:
    roles = run_compose_init_script(cluster)
    owner_url = roles.owner_url(cluster)
    env = {**app_env, "APP_DATABASE_URL": owner_url}
    upgrade_database(env)
    settings = load_settings(env)
    control = create_control_engine(settings.database_url)
    try:
        tenant = create_tenant(
            Clusters.single(control),
            Keyring(settings.encryption_keys, settings.encryption_active_key),
            "compose-tenant",
            RoleLimits(connection_limit=5, statement_timeout_ms=5000, scram_iterations=64),
        )
    finally:
        control.dispose()
    role = role_name(tenant.id)
    password = tenant_passwords(owner_url, settings)[role]
    return Initialized(cluster, owner_url, roles.bouncer_password, role, password)


@contextlib.contextmanager
def _connect(url: str) -> Iterator[psycopg2.extensions.cursor]:
    connection = psycopg2.connect(url, connect_timeout=10)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


def test_initdb_owner_is_a_createrole_non_superuser_owning_the_database(
    initialized: Initialized,
) -> None:
    with _connect(initialized.owner_url) as cursor:
        cursor.execute(
            "SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles"
            " WHERE rolname = current_user"
        )
        assert cursor.fetchone() == (False, True, False)
        cursor.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        )
        assert cursor.fetchone() == ("tenantpool",)


def test_initdb_get_auth_answers_for_tenant_roles_only(initialized: Initialized) -> None:
    with _connect(initialized.url("pgbouncer_auth", initialized.bouncer_password)) as cursor:
        cursor.execute(
            "SELECT usename, passwd FROM pgbouncer.get_auth(%s)", (initialized.tenant_role,)
        )
        ((usename, verifier),) = cursor.fetchall()
        assert usename == initialized.tenant_role
        assert verifier.startswith("SCRAM-SHA-256$64:")
        for role in ("postgres", "tenantpool", "pgbouncer_auth", "tenant_base"):
            cursor.execute("SELECT usename, passwd FROM pgbouncer.get_auth(%s)", (role,))
            assert cursor.fetchall() == [], role
        with pytest.raises(errors.InsufficientPrivilege):
            cursor.execute("SELECT passwd FROM pg_shadow")


def test_initdb_owner_cannot_call_or_replace_get_auth(initialized: Initialized) -> None:
    with _connect(initialized.owner_url) as cursor:
        with pytest.raises(errors.InsufficientPrivilege):
            cursor.execute("SELECT * FROM pgbouncer.get_auth(%s)", (initialized.tenant_role,))
        with pytest.raises(errors.InsufficientPrivilege):
            cursor.execute(
                "CREATE OR REPLACE FUNCTION pgbouncer.get_auth(p_usename name) "
                "RETURNS TABLE (usename name, passwd text) LANGUAGE sql "
                "AS $$ SELECT rolname, 'x'::text FROM pg_roles LIMIT 1 $$"
            )


@pytest.mark.skipif(find_pgbouncer() is None, reason=INSTALL_HINT)
def test_initdb_tenant_logs_in_through_pgbouncer_configured_as_in_compose(
    initialized: Initialized,
) -> None:
    with _pgbouncer(initialized) as port:
        tenant_url = initialized.url(initialized.tenant_role, initialized.tenant_password, port)
        with _connect(tenant_url) as cursor:
            cursor.execute("SELECT current_user, count(*) FROM users")
            assert cursor.fetchone() == (initialized.tenant_role, 0)
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(
                initialized.url(initialized.tenant_role, "wrong" + secrets.token_hex(8), port)
            ).close()
        # Nobody else gets a verifier through auth_query, so nobody else logs in.
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(initialized.url("tenantpool", "x", port)).close()


@contextlib.contextmanager
def _pgbouncer(initialized: Initialized) -> Iterator[int]:
    """A pgbouncer in front of the cluster with compose.yaml's settings; yields its port."""
    compose = compose_pgbouncer()
    directory = Path(tempfile.mkdtemp(prefix="tenantpool-pgbouncer-"))
    try:
        with LocalPgBouncer(
            directory,
            server_port=initialized.cluster.port,
            database=compose.database,
            users={compose.auth_user: initialized.bouncer_password},
            settings=compose.settings,
        ) as bouncer:
            yield bouncer.port
    finally:
        shutil.rmtree(directory, ignore_errors=True)


REPLICATION_SCRIPT = INIT_SCRIPT.parent / "20-replication.sh"


def test_initdb_replicator_may_stream_and_do_nothing_else() -> None:
    password = secrets.token_urlsafe(24)
    with throwaway_cluster() as cluster:
        run_initdb_script(cluster, REPLICATION_SCRIPT, REPLICATION_PASSWORD=password)
        with _connect(cluster.superuser_url()) as cursor:
            cursor.execute("SELECT pg_reload_conf()")
            cursor.execute(
                "SELECT rolreplication, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls "
                "FROM pg_roles WHERE rolname = 'replicator'"
            )
            assert cursor.fetchone() == (True, False, False, False, False)
        url = f"postgresql://replicator:{password}@127.0.0.1:{cluster.port}/postgres"
        streaming = psycopg2.connect(url + "?replication=true", connect_timeout=10)
        streaming.autocommit = True  # a walsender takes no BEGIN
        try:
            with streaming.cursor() as cursor:
                cursor.execute("IDENTIFY_SYSTEM")
                assert cursor.fetchone() is not None
        finally:
            streaming.close()
        # No tenant data through it: it has no grants and is not a tenant role.
        with _connect(url) as cursor, pytest.raises(errors.InsufficientPrivilege):
            cursor.execute("SELECT count(*) FROM pg_authid")
