"""Fault tests: a real gunicorn, often behind a fault proxy, with short database timeouts."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from app.dev.cluster import LocalCluster
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import create_tenant
from app.tenancy.control.roles import RoleLimits
from tests.e2e.conftest import SeededTenant, Service, start_service, stop_service
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.e2e

STATEMENT_TIMEOUT_MS = 1000
CONNECT_TIMEOUT = 2
IO_TIMEOUT = 3.0
POOL_TIMEOUT = 2.0
FAULT_SETTINGS = {
    "APP_TENANT_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
    "APP_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
    "APP_DATABASE_IO_TIMEOUT": str(IO_TIMEOUT),
    "APP_POOL_TIMEOUT": str(POOL_TIMEOUT),
}
# The longest a request may wait on the database under FAULT_SETTINGS: a pool wait, then
# a round trip and a reconnect, each bounded (app.dbwait).
DATABASE_BOUND = POOL_TIMEOUT + IO_TIMEOUT + CONNECT_TIMEOUT
# The request timeout the tests hold the service to: the bound plus what a loaded 2-core
# machine may add.
REQUEST_TIMEOUT = DATABASE_BOUND + 5

StartService = Callable[..., Service]


def through(url: str, proxy: FaultProxy) -> str:
    """``url`` with its port replaced by the proxy's."""
    return make_url(url).set(port=proxy.port).render_as_string(hide_password=False)


@pytest.fixture
def proxy(pg_cluster: LocalCluster) -> Iterator[FaultProxy]:
    """A fault proxy in front of the suite's cluster."""
    with FaultProxy(pg_cluster.port) as running:
        yield running


@pytest.fixture
def start_fault_service(
    app_env: dict[str, str], migrated: None, tmp_path: Path
) -> Iterator[StartService]:
    """Start gunicorn with FAULT_SETTINGS on a database URL; all stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(database_url: str, *, workers: int = 2, threads: int = 4, **settings: str) -> Service:
        env = {**app_env, **FAULT_SETTINGS, **settings, "APP_DATABASE_URL": database_url}
        log_path = tmp_path / f"gunicorn-{len(started)}.log"
        process, service = start_service(env, log_path, workers=workers, threads=threads)
        started.append(process)
        return service

    yield start
    for process in started:
        stop_service(process)


def new_tenant(tenancy: Tenancy, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS) -> SeededTenant:
    """A new tenant whose role has ``statement_timeout_ms``."""
    limits = RoleLimits(
        connection_limit=20,
        statement_timeout_ms=statement_timeout_ms,
        scram_iterations=tenancy.limits.scram_iterations,
    )
    name = f"fault-{uuid.uuid4().hex[:12]}"
    made = create_tenant(tenancy.clusters, tenancy.keyring, name, limits)
    return SeededTenant(str(made.id), made.name, made.api_key)


@pytest.fixture
def fault_tenants(tenancy: Tenancy) -> list[SeededTenant]:
    """Two new tenants whose roles have the fault tests' short statement_timeout."""
    return [new_tenant(tenancy), new_tenant(tenancy)]


@pytest.fixture
def owner_engine(owner_url: str) -> Iterator[sa.Engine]:
    """The owner, to take table locks; it never reads tenant rows."""
    engine = sa.create_engine(make_url(owner_url).set(drivername="postgresql+psycopg2"))
    yield engine
    engine.dispose()


@pytest.fixture
def superuser_engine(pg_cluster: LocalCluster) -> Iterator[sa.Engine]:
    """Only to inspect the server (pg_stat_activity), never to read tenant data."""
    url = make_url(pg_cluster.superuser_url("tenantpool")).set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(url, pool_size=1)
    yield engine
    engine.dispose()


def backends_of(engine: sa.Engine, tenant_id: str) -> list[sa.Row[tuple[int, str, str | None]]]:
    """(pid, application_name, wait_event_type) of the tenant's backends."""
    query = sa.text(
        "SELECT pid, application_name, wait_event_type FROM pg_stat_activity "
        "WHERE application_name LIKE :pattern"
    )
    with engine.connect() as connection:
        return list(connection.execute(query, {"pattern": f"tp:{tenant_id}:%"}))
