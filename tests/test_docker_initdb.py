"""docker/postgres/initdb and compose's PgBouncer settings, on a real cluster and a real pgbouncer.

The init script runs as in the postgres container (psql as the superuser, passwords from the
environment); the migrations then run as the owner it made, and a tenant is provisioned as the
app does it. The last test logs that tenant in through a pgbouncer configured from
compose.yaml's own environment (auth_query through ``pgbouncer.get_auth``, SCRAM, transaction
mode): the path of every tenant request in the compose deployment.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import yaml
from psycopg2 import errors

from app.crypto import Keyring
from app.db import create_control_engine
from app.devcluster import LocalCluster, free_port
from app.tenancy.provisioning import RoleLimits, create_tenant, role_name
from config import load_settings
from tests.conftest import throwaway_cluster, upgrade_database
from tests.support import tenant_passwords

REPO_ROOT = Path(__file__).resolve().parent.parent
INIT_SCRIPT = REPO_ROOT / "docker" / "postgres" / "initdb" / "10-tenantpool.sh"
COMPOSE = REPO_ROOT / "docker" / "compose.yaml"
PGBOUNCER = shutil.which("pgbouncer") or next(
    (str(path) for path in (Path("/usr/sbin/pgbouncer"),) if path.exists()), None
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
    owner_password, bouncer_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    assert cluster.superuser_password is not None
    result = subprocess.run(
        ["bash", str(INIT_SCRIPT)],
        env={
            "PATH": f"{cluster.bindir}:{os.environ['PATH']}",
            "POSTGRES_USER": "postgres",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(cluster.port),
            "PGPASSWORD": cluster.superuser_password,
            "TENANTPOOL_OWNER_PASSWORD": owner_password,
            "PGBOUNCER_AUTH_PASSWORD": bouncer_password,
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    owner_url = f"postgresql://tenantpool:{owner_password}@127.0.0.1:{cluster.port}/tenantpool"
    env = {**app_env, "APP_DATABASE_URL": owner_url}
    upgrade_database(env)
    settings = load_settings(env)
    control = create_control_engine(settings.database_url)
    try:
        tenant = create_tenant(
            control,
            Keyring(settings.encryption_keys, settings.encryption_active_key),
            "compose-tenant",
            RoleLimits(connection_limit=5, statement_timeout_ms=5000, scram_iterations=64),
        )
    finally:
        control.dispose()
    role = role_name(tenant.id)
    password = tenant_passwords(owner_url, settings)[role]
    return Initialized(cluster, owner_url, bouncer_password, role, password)


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


@pytest.mark.skipif(
    PGBOUNCER is None, reason="pgbouncer is not installed (apt-get install pgbouncer)"
)
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
    assert PGBOUNCER is not None
    compose_env = yaml.safe_load(COMPOSE.read_text())["services"]["pgbouncer"]["environment"]
    # The image turns its environment into pgbouncer.ini this way (DB_* build the [databases]
    # line and userlist.txt); "$$" is compose's escape for "$".
    settings = {
        key.lower(): str(value).replace("$$", "$")
        for key, value in compose_env.items()
        if not key.startswith("DB_") and key != "LISTEN_PORT"
    }
    port = free_port()
    run_as = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    directory = Path(tempfile.mkdtemp(prefix="tenantpool-pgbouncer-"))
    process = None
    try:
        directory.chmod(0o755)
        userlist = directory / "userlist.txt"
        userlist.write_text(f'"{compose_env["DB_USER"]}" "{initialized.bouncer_password}"\n')
        userlist.chmod(0o600)
        ini = directory / "pgbouncer.ini"
        lines = [
            "[databases]",
            f"{compose_env['DB_NAME']} = host=127.0.0.1 port={initialized.cluster.port} "
            f"auth_user={compose_env['DB_USER']}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            f"auth_file = {userlist}",
            f"logfile = {directory / 'pgbouncer.log'}",
            *(f"{key} = {value}" for key, value in settings.items()),
        ]
        ini.write_text("\n".join(lines) + "\n")
        if run_as is not None:  # pgbouncer refuses to run as root
            for path in (directory, userlist, ini):
                os.chown(path, run_as.pw_uid, run_as.pw_gid)
        process = subprocess.Popen(
            [PGBOUNCER, str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=run_as.pw_uid if run_as else None,
            group=run_as.pw_gid if run_as else None,
            extra_groups=[] if run_as else None,
        )
        _wait_for_port(port, process, directory / "pgbouncer.log")
        yield port
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"pgbouncer exited:\n{log.read_text() if log.exists() else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    pytest.fail("pgbouncer did not listen within 30 s")
