"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import sqlalchemy as sa
import yaml
from click.testing import Result
from flask import Flask

from app import create_app, models
from app.crypto import Keyring, tenant_aad
from app.dev.cluster import LocalCluster
from app.models import Tenant
from app.tenancy import tenancy_of
from app.tenancy.control.ddl import PLACEMENTS_TABLE
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.control.roles import role_name
from app.tenancy.control.scram import generate_password, scram_sha256_verifier
from config import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE = REPO_ROOT / "docker" / "compose.yaml"
INIT_SCRIPT = REPO_ROOT / "docker" / "postgres" / "initdb" / "10-tenantpool.sh"


def tenant_tables() -> list[str]:
    """Every tenant table of the models, parents before children, from the metadata.

    Tests derive the tables from here (or from the catalog), never count them: a table a
    team adds must not break tests unrelated to it.
    """
    return [
        table.name
        for table in models.metadata.sorted_tables
        if "tenant_id" in table.c and table.name != PLACEMENTS_TABLE
    ]


MakePlaced = Callable[[str], ProvisionedTenant]
"""The ``make_placed`` fixture: a fresh tenant on the named cluster."""


def run_flask(
    env: Mapping[str, str], *args: str, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``flask --app wsgi ARGS`` in a child process, ``env`` over ours."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def flask_or_fail(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """:func:`run_flask`; a non-zero exit fails the test with the command's output."""
    result = run_flask(env, *args)
    if result.returncode != 0:
        pytest.fail(
            f"flask {' '.join(args)} failed (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return result


def gunicorn_refusal(env: Mapping[str, str]) -> list[str]:
    """Start the real gunicorn with ``env``; it must refuse: its ``tenantpool:`` lines."""
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0, "gunicorn started"
    return [line for line in result.stderr.splitlines() if line.startswith("tenantpool:")]


def auth_headers(tenant: ProvisionedTenant) -> dict[str, str]:
    """The headers of a request by ``tenant`` for itself."""
    return {"X-Tenant-ID": str(tenant.id), "Authorization": f"Bearer {tenant.api_key}"}


FORK_GUARD = 5.0  # seconds before a hung forked child fails its test


def run_in_child(check: Callable[[], bool]) -> int:
    """Fork; the child exits 0 if ``check()`` is true. Returns the child's exit status."""
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a multi-threaded process; daemon threads (a
        # reaper, other tests') may exist, and the child only runs ``check``.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            # pytest-timeout's SIGALRM handler would resume the test session in the child.
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(FORK_GUARD))
            code = 0 if check() else 1
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + FORK_GUARD
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung")


def tenant_passwords(owner_url: str, settings: Settings) -> dict[str, str]:
    """Every tenant role's database password, decrypted from ``tenants`` as the app does."""
    keyring = Keyring(settings.encryption_keys, settings.encryption_active_key)
    connection = psycopg2.connect(owner_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT id, db_user, db_password_encrypted FROM tenants")
            rows = cursor.fetchall()
    finally:
        connection.close()
    return {
        role: keyring.decrypt_str(token, tenant_aad(uuid.UUID(str(tenant_id)), role))
        for tenant_id, role, token in rows
    }


def set_role_password(
    control_engine: sa.Engine, tenant_id: uuid.UUID, keyring: Keyring | None = None
) -> None:
    """Give the tenant's role a new random password, as the owner.

    With ``keyring``, the control plane gets it too, in the same transaction (a rotation
    whose change event never came); without, only the role changes: the password was
    changed behind the service's back.
    """
    password = generate_password()
    role = role_name(tenant_id)
    with control_engine.begin() as connection:
        connection.exec_driver_sql(
            f"ALTER ROLE \"{role}\" PASSWORD '{scram_sha256_verifier(password, 64)}'"
        )
        if keyring is not None:
            connection.execute(
                sa.update(Tenant)
                .where(Tenant.id == tenant_id)
                .values(
                    db_password_encrypted=keyring.encrypt(password, tenant_aad(tenant_id, role))
                )
            )


def failed_logins(server_log: Path, tenant_id: uuid.UUID) -> int:
    """How many logins of the tenant's role the server rejected (log_connections is on)."""
    line = f'password authentication failed for user "{role_name(tenant_id)}"'
    return server_log.read_text(errors="replace").count(line)


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` every 10 ms until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def stored_password(control_engine: sa.Engine, keyring: Keyring, tenant_id: uuid.UUID) -> str:
    """The tenant's database password, decrypted from its row as the engine factory does."""
    with control_engine.connect() as connection:
        row = connection.execute(
            sa.select(Tenant.db_user, Tenant.db_password_encrypted).where(Tenant.id == tenant_id)
        ).one()
    return keyring.decrypt_str(row.db_password_encrypted, tenant_aad(tenant_id, row.db_user))


def backends_by_worker(
    superuser_url: str, tenant_id: uuid.UUID | str
) -> dict[int, tuple[int, int]]:
    """pg_stat_activity as the superuser sees it: per worker pid, the tenant's backends
    (``application_name`` ``tp:<tenant>:<pid>``) and how many of them wait on a lock."""
    connection = psycopg2.connect(superuser_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT split_part(application_name, ':', 3)::int, count(*), "
                "count(*) FILTER (WHERE wait_event_type = 'Lock') "
                "FROM pg_stat_activity WHERE application_name LIKE %s GROUP BY 1",
                (f"tp:{tenant_id}:%",),
            )
            return {pid: (total, waiting) for pid, total, waiting in cursor.fetchall()}
    finally:
        connection.close()


def connect_as(
    control_url: str | sa.URL, tenant_id: uuid.UUID, password: str
) -> psycopg2.extensions.connection:
    """A plain psycopg2 connection as the tenant's role (raises OperationalError on failure)."""
    url = sa.make_url(control_url)
    return psycopg2.connect(
        host=url.host,
        port=url.port,
        dbname=url.database,
        user=role_name(tenant_id),
        password=password,
        connect_timeout=10,
    )


def invoke(app: Flask, *args: str, input: str | None = None) -> Result:
    """Run a ``flask`` command of ``app`` in process, inside an app context as the CLI does."""
    with app.app_context():
        return app.test_cli_runner().invoke(args=list(args), input=input)


@contextlib.contextmanager
def app_for(env: dict[str, str]) -> Iterator[Flask]:
    """An app on the database and keys of ``env``; its engines are disposed after."""
    app = create_app(load_settings(env))
    try:
        yield app
    finally:
        tenancy_of(app).close()


def child_pids(pid: int) -> set[int]:
    """Live child processes of ``pid`` (gunicorn's workers, for its master), from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The fields after the command name, which is in parentheses and may hold spaces.
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == pid and state != "Z":
            children.add(int(entry.name))
    return children


class Inspector:
    """Superuser queries on each server by cluster name: only to look, never as the app."""

    def __init__(self, urls: dict[str, str]) -> None:
        self._urls = urls

    def rows(self, cluster: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
        connection = psycopg2.connect(self._urls[cluster])
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def value(self, cluster: str, query: str, *params: Any) -> Any:
        return self.rows(cluster, query, *params)[0][0]

    def has_role(self, cluster: str, tenant_id: uuid.UUID) -> bool:
        query = "SELECT count(*) FROM pg_roles WHERE rolname = %s"
        return bool(self.value(cluster, query, f"t_{tenant_id.hex}"))

    def placed(self, cluster: str, tenant_id: uuid.UUID) -> bool:
        query = "SELECT count(*) FROM tenant_placements WHERE tenant_id = %s"
        return bool(self.value(cluster, query, str(tenant_id)))

    def tenant_rows(self, cluster: str, table: str, tenant_id: uuid.UUID) -> int:
        # table is one of our fixed names, never input.
        query = f"SELECT count(*) FROM {table} WHERE tenant_id = %s"
        return int(self.value(cluster, query, str(tenant_id)))

    def holds_nothing_of(self, cluster: str, tenant_id: uuid.UUID) -> bool:
        """No placement, no role, no row of the tenant is left on the cluster."""
        rows = sum(self.tenant_rows(cluster, table, tenant_id) for table in tenant_tables())
        return (
            rows == 0
            and not self.placed(cluster, tenant_id)
            and not self.has_role(cluster, tenant_id)
        )


@dataclass(frozen=True)
class ComposeRoles:
    """What docker/postgres/initdb made: owner ``tenantpool`` of database ``tenantpool``,
    ``pgbouncer_auth`` and ``pgbouncer.get_auth``; their passwords."""

    owner_password: str
    bouncer_password: str

    def owner_url(self, cluster: LocalCluster) -> str:
        return f"postgresql://tenantpool:{self.owner_password}@127.0.0.1:{cluster.port}/tenantpool"


def run_compose_init_script(cluster: LocalCluster) -> ComposeRoles:
    """Run the compose init script on ``cluster`` as the postgres container does."""
    roles = ComposeRoles(secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    assert cluster.superuser_password is not None
    result = subprocess.run(
        ["bash", str(INIT_SCRIPT)],
        env={
            "PATH": f"{cluster.bindir}:{os.environ['PATH']}",
            "POSTGRES_USER": "postgres",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(cluster.port),
            "PGPASSWORD": cluster.superuser_password,
            "TENANTPOOL_OWNER_PASSWORD": roles.owner_password,
            "PGBOUNCER_AUTH_PASSWORD": roles.bouncer_password,
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return roles


@dataclass(frozen=True)
class ComposePgBouncer:
    """compose.yaml's PgBouncer: its database, the auth_query user, its ``[pgbouncer]`` settings."""

    database: str
    auth_user: str
    settings: dict[str, str]


def compose_pgbouncer() -> ComposePgBouncer:
    """PgBouncer's settings as the compose image writes them from its environment."""
    environment = yaml.safe_load(COMPOSE.read_text())["services"]["pgbouncer"]["environment"]
    # The image turns its environment into pgbouncer.ini this way (DB_* build the [databases]
    # line and userlist.txt); "$$" is compose's escape for "$".
    settings = {
        key.lower(): str(value).replace("$$", "$")
        for key, value in environment.items()
        if not key.startswith("DB_") and key != "LISTEN_PORT"
    }
    return ComposePgBouncer(environment["DB_NAME"], environment["DB_USER"], settings)


class FakeClock:
    """A clock that moves only when told to (``now`` or ``advance``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def lazy_engine(tenant_id: uuid.UUID) -> sa.Engine:
    """An engine that would connect to nothing; creating it opens no socket."""
    return sa.create_engine("postgresql+psycopg2://u:p@127.0.0.1:1/x", pool_size=1)


def logged_since(pg_cluster: LocalCluster, offset: int) -> list[str]:
    """The statements the server logged after byte ``offset`` of its log, one per message."""
    time.sleep(0.2)  # the logger writes asynchronously to the file
    with pg_cluster.log_path.open(errors="replace") as handle:
        handle.seek(offset)
        return [
            line.split(" statement: ", 1)[1].rstrip("\n")
            for line in handle
            if " statement: " in line
        ]
