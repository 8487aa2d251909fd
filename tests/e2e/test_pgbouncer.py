"""The service through a real PgBouncer in transaction mode (the Debian package, 1.18).

Set up as docker/compose.yaml sets it up: the init script's roles and ``pgbouncer.get_auth``,
compose's PgBouncer settings (pools per tenant role, ``auth_query``), the owner straight to
PostgreSQL through ``APP_DATABASE_URL``, tenants through PgBouncer (the ``default`` cluster's
DSN). Only the pool size is smaller, to see it hold. The isolation and pagination tests of
test_service.py run again here, with this module's ``service`` and ``seeded``.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import requests

from app.dev.cluster import LocalCluster
from app.dev.pgbouncer import INSTALL_HINT, LocalPgBouncer, find_pgbouncer
from tests.conftest import throwaway_cluster, upgrade_database
from tests.e2e.conftest import SeededTenant, Service, seed, start_service, stop_service
from tests.e2e.test_service import (  # noqa: F401  (collected again, through PgBouncer)
    test_service_every_endpoint_for_both_tenants,
    test_service_key_of_a_with_tenant_b_is_401,
    test_service_pagination_through_gunicorn,
    test_service_tenant_never_reaches_another_tenants_rows,
)
from tests.support import compose_pgbouncer, run_compose_init_script

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_pgbouncer() is None, reason=INSTALL_HINT),
]

POOL_SIZE = 2
ADMIN_USER = "pgbouncer_admin"


@dataclass(frozen=True)
class Bouncer:
    pgbouncer: LocalPgBouncer
    admin_url: str
    superuser_url: str
    cluster: LocalCluster
    env: dict[str, str]


@pytest.fixture(scope="module")
def bouncer(app_env: dict[str, str]) -> Iterator[Bouncer]:
    """A server initialised as compose's, PgBouncer in front, the app's environment for it."""
    compose = compose_pgbouncer()
    # Not under pytest's 0700 tmp root: PgBouncer may run as another account (when root).
    workdir = Path(tempfile.mkdtemp(prefix="tenantpool-pgb-"))
    admin_password = secrets.token_urlsafe(24)
    with throwaway_cluster(max_connections=50) as cluster:
        roles = run_compose_init_script(cluster)
        superuser_url = cluster.superuser_url(compose.database)
        _superuser(
            superuser_url,
            # Every statement of the database is logged, to show below that none was prepared;
            # not PgBouncer's own auth_query (it uses the extended protocol).
            f"ALTER DATABASE {compose.database} SET log_statement = 'all'",
            f"ALTER ROLE {compose.auth_user} SET log_statement = 'none'",
        )
        settings = {
            **compose.settings,
            "default_pool_size": str(POOL_SIZE),
            "admin_users": ADMIN_USER,
        }
        users = {compose.auth_user: roles.bouncer_password, ADMIN_USER: admin_password}
        try:
            with LocalPgBouncer(
                workdir,
                server_port=cluster.port,
                database=compose.database,
                users=users,
                settings=settings,
            ) as pgbouncer:
                tenants_route = f"postgresql://127.0.0.1:{pgbouncer.port}/{compose.database}"
                env = {
                    **app_env,
                    "APP_DATABASE_URL": roles.owner_url(cluster),
                    "APP_CLUSTERS": json.dumps({"default": tenants_route}),
                    "APP_TENANT_POOL_SIZE": "4",
                }
                upgrade_database(env)
                admin_url = pgbouncer.url(ADMIN_USER, admin_password, "pgbouncer")
                yield Bouncer(pgbouncer, admin_url, superuser_url, cluster, env)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def seeded(bouncer: Bouncer, tmp_path_factory: pytest.TempPathFactory) -> list[SeededTenant]:
    output = tmp_path_factory.mktemp("seed-pgb") / "tenants.json"
    return seed(bouncer.env, output, count=2, prefix="pgb")


@pytest.fixture(scope="module")
def service(
    bouncer: Bouncer, seeded: list[SeededTenant], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    log_path = tmp_path_factory.mktemp("gunicorn-pgb") / "gunicorn.log"
    process, running = start_service(bouncer.env, log_path, workers=2, threads=4)
    yield running
    stop_service(process)


def _superuser(url: str, *statements: str) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def _admin(url: str, command: str) -> list[dict[str, object]]:
    """One SHOW command on PgBouncer's admin console, rows as dicts."""
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True  # the console knows no transactions
        with connection.cursor() as cursor:
            cursor.execute(command)
            names = [column[0] for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        connection.close()


class _Sampler(threading.Thread):
    """Every 50 ms: tenant connections, per role, on the server and at PgBouncer."""

    def __init__(self, bouncer: Bouncer) -> None:
        super().__init__(daemon=True)
        self.bouncer = bouncer
        self.stop = threading.Event()
        self.max_server: dict[str, int] = {}
        self.max_pooled: dict[str, int] = {}
        self.max_clients: dict[str, int] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.05)

    def sample(self) -> None:
        on_server = _superuser(
            self.bouncer.superuser_url,
            "SELECT usename, count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND usename ~ '^t_' GROUP BY usename",
        )
        _raise(self.max_server, {str(user): int(str(count)) for user, count in on_server})
        pools = _admin(self.bouncer.admin_url, "SHOW POOLS")
        servers = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
        _raise(
            self.max_pooled,
            {
                str(pool["user"]): sum(int(str(pool[name])) for name in servers)
                for pool in pools
                if str(pool["user"]).startswith("t_")
            },
        )
        clients: dict[str, int] = {}
        for client in _admin(self.bouncer.admin_url, "SHOW CLIENTS"):
            if str(client["user"]).startswith("t_"):
                clients[str(client["user"])] = clients.get(str(client["user"]), 0) + 1
        _raise(self.max_clients, clients)


def _raise(maxima: dict[str, int], sample: dict[str, int]) -> None:
    for key, value in sample.items():
        maxima[key] = max(maxima.get(key, 0), value)


def test_pgbouncer_server_connections_stay_within_its_pools(
    bouncer: Bouncer, service: Service, seeded: list[SeededTenant]
) -> None:
    sampler = _Sampler(bouncer)
    sampler.start()

    def hit(number: int) -> int:
        tenant = seeded[number % 2]
        if number % 3 == 0:
            body = {"first_name": "Load", "last_name": str(number)}
            response = requests.post(
                f"{service.url}/v1/users", json=body, headers=tenant.headers, timeout=20
            )
        else:
            response = requests.get(f"{service.url}/v1/users", headers=tenant.headers, timeout=20)
        return response.status_code

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(hit, range(400)))
        sampler.sample()  # the pooled client connections, after the burst
    finally:
        sampler.stop.set()
        sampler.join(10)
    assert set(statuses) <= {200, 201}, statuses
    roles = {"t_" + tenant.id.replace("-", "") for tenant in seeded}
    assert set(sampler.max_clients) == roles
    for role in roles:
        assert sampler.max_server.get(role, 0) <= POOL_SIZE
        assert sampler.max_pooled.get(role, 0) <= POOL_SIZE
    # The service held more client connections than PgBouncer gave it server connections.
    assert sum(sampler.max_clients.values()) > POOL_SIZE * len(roles), sampler.max_clients


def test_pgbouncer_no_statement_is_prepared_server_side(
    bouncer: Bouncer, service: Service, seeded: list[SeededTenant]
) -> None:
    """psycopg2 sends every statement with the simple query protocol, SQLAlchemy included."""
    for tenant in seeded:
        assert requests.get(f"{service.url}/v1/users", headers=tenant.headers, timeout=10).ok
    log = _read_log(bouncer.cluster.log_path)
    simple = re.findall(r"LOG:  statement: .*app\.tenant_id", log)
    extended = re.findall(r"LOG:  execute .*", log)
    assert simple, "tenant statements should have been logged"
    assert extended == []
    assert re.findall(r"statement: (?:PREPARE|EXECUTE|DEALLOCATE)", log, re.IGNORECASE) == []


def _read_log(path: Path) -> str:
    deadline = time.monotonic() + 5
    text = path.read_text(errors="replace")
    while "app.tenant_id" not in text and time.monotonic() < deadline:
        time.sleep(0.1)  # the server writes its log asynchronously
        text = path.read_text(errors="replace")
    return text
