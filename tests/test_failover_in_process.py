"""Failover in process: a synchronous standby promoted, the old primary left up read-only.

Every way of serving tenants (dedicated, shared, mix) and the control plane run on a
multi-host DSN listing both servers. The first write that meets the demoted primary is a
503 with Retry-After (its pool is dropped), the next reaches the new primary; the change
listener leaves the read-only server for the new primary and hears its events again.
Through a real gunicorn under load: tests/faults/test_failover.py.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg2
import pytest
import sqlalchemy as sa
from alembic import command
from flask import Flask
from prometheus_client import REGISTRY

from app import create_app
from app.cli.db import alembic_config
from app.dev.cluster import LocalCluster
from app.dev.standby import demote_in_place, make_standby, promote, require_synchronous
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.provisioning import ProvisionedTenant, create_tenant, rotate_api_key
from config import load_settings, psycopg2_url
from tests.conftest import ClusterFactory
from tests.e2e.conftest import seed
from tests.standbys import multi_host
from tests.support import auth_headers, flask_or_fail

WAYS = ("dedicated", "shared", "mix")
REFUSED_WITHIN = 5.0  # seconds for every worker to refuse a key rotated after a failover
T = TypeVar("T")
RETRY = {"Content-Type": "application/problem+json", "Retry-After": "1"}
CREATED = {"Content-Type": "application/json", "Retry-After": ""}


@dataclass
class Pair:
    primary: LocalCluster
    standby: LocalCluster
    apps: dict[str, Flask]
    env: dict[str, str]
    owner: str

    def tenancy(self, way: str = "dedicated") -> Tenancy:
        return tenancy_of(self.apps[way])


@pytest.fixture
def pair(cluster_factory: ClusterFactory, app_env: dict[str, str]) -> Iterator[Pair]:
    """A primary with a synchronous standby, and an app per way on a DSN listing both."""
    # -c synchronous_commit=off (the suite's speed-up) would let a commit skip the standby.
    primary = cluster_factory(max_connections=60, extra_settings={"synchronous_commit": "on"})
    owner = psycopg2_url(primary.bootstrap_owner("failover", secrets.token_urlsafe(24), "tp"))
    command.upgrade(alembic_config(owner), "head")
    # Beside the primary's data directory, which the server user can reach.
    standby = make_standby(
        primary, primary.datadir.parent / "standby1", name="standby1", max_connections=60
    )
    require_synchronous(primary, "standby1")
    env = {
        **app_env,
        "APP_DATABASE_URL": multi_host(owner, primary.port, standby.port),
        "APP_ENCRYPTION_KEYS": f"failover1:{secrets.token_hex(32)}",
        "APP_ENCRYPTION_ACTIVE_KEY": "failover1",
        "APP_DATABASE_IO_TIMEOUT": "10",
    }
    apps = {way: create_app(load_settings({**env, "APP_SERVING": way})) for way in WAYS}
    yield Pair(primary, standby, apps, env, owner)
    for app in apps.values():
        tenancy_of(app).close()
    standby.stop(mode="immediate")


def _post(app: Flask, tenant: ProvisionedTenant, last_name: str) -> tuple[int, dict[str, str]]:
    response = app.test_client().post(
        "/v1/users",
        json={"first_name": "Fail", "last_name": last_name},
        headers=auth_headers(tenant),
    )
    headers = {"Content-Type": response.content_type, "Retry-After": ""}
    headers["Retry-After"] = response.headers.get("Retry-After", "")
    return response.status_code, headers


def _server_port(engine: sa.Engine) -> int:
    """The port of the server ``engine`` now reaches (a pool that still held a connection
    to the old primary drops it first: asked again)."""

    def ask() -> int:
        with engine.connect() as connection:
            return int(connection.exec_driver_sql("SELECT inet_server_port()").scalar_one())

    return _once_more_after_failover(ask)


def _gateway_connections_in_use() -> float:
    return REGISTRY.get_sample_value("tenantpool_gateway_connections_in_use") or 0.0


def _once_more_after_failover(action: Callable[[], T]) -> T:
    """``action``, retried once if a pooled connection met the demoted primary."""
    try:
        return action()
    except sa.exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
        return action()


def _listener_on(server: LocalCluster) -> bool:
    connection = psycopg2.connect(server.superuser_url(), connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'tp:listener:%'"
            )
            row = cursor.fetchone()
            return row is not None and row[0] > 0
    finally:
        connection.close()


def test_failover_writes_follow_the_promoted_standby_in_every_way(pair: Pair) -> None:
    tenancy = pair.tenancy()
    tenant = create_tenant(tenancy.clusters, tenancy.keyring, "failover", tenancy.limits)
    for way, app in pair.apps.items():
        assert _post(app, tenant, f"before-{way}")[0] == 201, way
    for way in WAYS:
        pair.tenancy(way).listener.pump()  # type: ignore[union-attr]
    assert _listener_on(pair.primary)

    promote(pair.standby)
    demote_in_place(pair.primary)

    for way, app in pair.apps.items():
        # Each pool that meets the read-only server (the control plane's, the tenant's) is
        # dropped with a 503 + Retry-After; the write after that reaches the new primary.
        answers = [_post(app, tenant, f"cut-{way}-{n}") for n in range(3)]
        assert answers[0] == (503, RETRY), way
        assert answers[-1] == (201, CREATED), (way, answers)
        assert all(answer in ((503, RETRY), (201, CREATED)) for answer in answers), answers
    rows = (
        pair.apps["dedicated"]
        .test_client()
        .get("/v1/users", query_string={"page_size": 100}, headers=auth_headers(tenant))
    )
    names = {record["last_name"] for record in rows.get_json()["records"]}
    assert {f"before-{way}" for way in WAYS} <= names  # acknowledged on the old primary
    assert {f"cut-{way}-2" for way in WAYS} <= names
    assert not any(name.endswith("-0") for name in names)  # refused, so not written
    assert _server_port(tenancy.control_engine) == pair.standby.port


def test_failover_listener_follows_the_new_primary_and_its_events(pair: Pair) -> None:
    tenancy = pair.tenancy()
    tenant = create_tenant(tenancy.clusters, tenancy.keyring, "rotated", tenancy.limits)
    for app in pair.apps.values():
        assert _post(app, tenant, "warm")[0] == 201  # every app caches the key's hash

    promote(pair.standby)
    demote_in_place(pair.primary)
    _once_more_after_failover(
        lambda: rotate_api_key(tenancy.control_engine, tenant.id, actor="failover-test")
    )
    rotated = time.monotonic()

    # Nothing on the data path reveals a new API key: only the change listener can. The
    # reaper thread pumps every app's listener: each leaves the read-only server, finds the
    # new primary, drops every cached tenant and hears the events sent there.
    refused: set[str] = set()
    while refused != set(WAYS):
        waited = time.monotonic() - rotated
        print(
            waited,
            refused,
            {
                w: (
                    pair.tenancy(w).listener.connects,
                    pair.tenancy(w).listener.failures,
                    pair.tenancy(w).listener.connected,
                    pair.tenancy(w).listener.retry_in(),
                )
                for w in WAYS
            },
        )
        assert waited < REFUSED_WITHIN, f"old key still accepted by {set(WAYS) - refused}"
        for way, app in pair.apps.items():
            response = app.test_client().get("/v1/users", headers=auth_headers(tenant))
            if response.status_code == 401:
                refused.add(way)
        time.sleep(0.05)
    assert _listener_on(pair.standby)
    assert not _listener_on(pair.primary)


def test_failover_primary_stopped_immediately_then_standby_promoted(pair: Pair) -> None:
    tenancy = pair.tenancy()
    tenant = create_tenant(tenancy.clusters, tenancy.keyring, "stopped", tenancy.limits)
    for app in pair.apps.values():
        assert _post(app, tenant, "warm")[0] == 201

    in_use = _gateway_connections_in_use()
    pair.primary.stop(mode="immediate")
    down = {way: _post(app, tenant, "down") for way, app in pair.apps.items()}
    # A pooled connection discarded with no new one to be had: the gauge does not go down
    # for what never went out (SQLAlchemy reports a checkin for that failed checkout).
    assert _gateway_connections_in_use() == in_use
    promote(pair.standby)

    for way, app in pair.apps.items():
        # While no server takes writes: 503 with Retry-After, never a 500.
        assert down[way] == (503, RETRY)
        answers = [_post(app, tenant, f"after-{way}-{n}") for n in range(2)]
        assert answers[-1][0] == 201, (way, answers)
        assert all(status in (201, 503) for status, _ in answers), (way, answers)
    assert _server_port(tenancy.control_engine) == pair.standby.port


def test_failover_a_standby_listed_first_is_passed_over_by_every_writer(
    pair: Pair, tmp_path: Path
) -> None:
    env = {
        **pair.env,
        "APP_DATABASE_URL": multi_host(pair.owner, pair.standby.port, pair.primary.port),
    }

    # Migrations and seeding (tenant roles, rows through each tenant's engine) as commands.
    flask_or_fail(env, "db", "upgrade")
    seeded = seed(env, tmp_path / "seeded.json", count=1, prefix="listed", users_per_tenant=2)
    app = create_app(load_settings(env))
    try:
        client = app.test_client()
        headers = {"X-Tenant-ID": seeded[0].id, "Authorization": f"Bearer {seeded[0].api_key}"}
        assert client.get("/v1/users", headers=headers).get_json()["total"] == 2
        response = client.post(
            "/v1/users", json={"first_name": "A", "last_name": "B"}, headers=headers
        )
        assert response.status_code == 201
        tenancy = tenancy_of(app)
        assert _server_port(tenancy.control_engine) == pair.primary.port
        assert tenancy.listener is not None
        tenancy.listener.pump()
        assert tenancy.listener.connected
    finally:
        tenancy_of(app).close()
