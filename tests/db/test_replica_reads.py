"""Reads on real streaming standbys: read-your-writes, and when a replica leaves the rotation.

A primary of the module's own (migrated once), and per test a standby made with
``pg_basebackup``: delayed (``recovery_min_apply_delay``), stopped under read load, made
to lag, promoted. The app runs in process; which server answered is counted by the
app's replicas (``served``), and what a replica shows is observable: a row written a
moment ago is not there yet.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.dev.cluster import LocalCluster
from app.dev.standby import make_standby, promote, set_apply_delay
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.provisioning import ProvisionedTenant, create_tenant
from app.tenancy.serving.consistency import parse_token
from config import load_settings
from tests.conftest import FreshDatabase, throwaway_cluster
from tests.replicas import wait_for_replica
from tests.support import auth_headers

_FAST = {"fsync": "off", "full_page_writes": "off"}
LEAVES_WITHIN = 5.0
"""Seconds within which a replica down, lagging or promoted must leave the rotation."""

MakeStandby = Callable[..., LocalCluster]


@pytest.fixture(scope="module")
def primary() -> Iterator[LocalCluster]:
    with throwaway_cluster(max_connections=60, extra_settings=_FAST) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def primary_env(primary: LocalCluster, fresh_database: FreshDatabase) -> dict[str, str]:
    return fresh_database(primary)


@pytest.fixture
def make_replica(primary: LocalCluster) -> Iterator[MakeStandby]:
    """Standbys of ``primary`` for one test, stopped after it."""
    made: list[LocalCluster] = []

    def make(**options: object) -> LocalCluster:
        path = Path(primary.datadir.parent / f"standby-{uuid.uuid4().hex[:8]}")
        standby = make_standby(primary, path, max_connections=60, extra_settings=_FAST, **options)  # type: ignore[arg-type]
        made.append(standby)
        return standby

    yield make
    for standby in made:
        standby.stop("immediate")


@contextlib.contextmanager
def replica_app(
    env: dict[str, str], standby: LocalCluster, *, max_lag: float = 5.0, serving: str = "dedicated"
) -> Iterator[Flask]:
    database = env["APP_DATABASE_URL"].rsplit("/", 1)[1]
    replicas = {"default": [f"postgresql://127.0.0.1:{standby.port}/{database}"]}
    settings = load_settings(
        {
            **env,
            "APP_SERVING": serving,
            "APP_READ_REPLICAS": json.dumps(replicas),
            "APP_REPLICA_MAX_LAG": str(max_lag),
        }
    )
    application = create_app(settings)
    try:
        yield application
    finally:
        tenancy_of(application).close()


def _served(tenancy: Tenancy) -> int:
    assert tenancy.replicas is not None
    return sum(tenancy.replicas.served.values())


def _tenant_with_a_user(app: Flask) -> tuple[ProvisionedTenant, str]:
    """A tenant and one user of it, both replayed on the replica already."""
    tenancy = tenancy_of(app)
    wait_for_replica(tenancy)  # in the rotation before the tenant exists
    tenant = create_tenant(
        tenancy.clusters, tenancy.keyring, f"rr-{uuid.uuid4().hex[:12]}", tenancy.limits
    )
    # Its role and the gateway's grant are not on the replica yet: the primary answers.
    before = _served(tenancy)
    first = app.test_client().get("/v1/users", headers=auth_headers(tenant))
    assert first.status_code == 200, first.json
    assert _served(tenancy) == before
    created = app.test_client().post(
        "/v1/users", json={"first_name": "A", "last_name": "B"}, headers=auth_headers(tenant)
    )
    assert created.status_code == 201, created.json
    token = parse_token([created.headers["X-Consistency-Token"]])
    assert token is not None
    wait_for_replica(tenancy, token.position, tenants=(tenant.id,))
    return tenant, created.json["id"]  # type: ignore[index]


@pytest.mark.parametrize("serving", ["dedicated", "shared"])
def test_replica_delayed_serves_stale_reads_but_never_to_a_token(
    primary_env: dict[str, str], make_replica: MakeStandby, serving: str
) -> None:
    standby = make_replica(apply_delay_ms=1500)
    with replica_app(primary_env, standby, serving=serving) as app:
        tenancy = tenancy_of(app)
        tenant, _ = _tenant_with_a_user(app)
        client = app.test_client()
        headers = auth_headers(tenant)
        stale = 0
        for i in range(8):
            created = client.post(
                "/v1/users", json={"first_name": f"u{i}", "last_name": "x"}, headers=headers
            )
            assert created.status_code == 201
            token = created.headers["X-Consistency-Token"]
            path = f"/v1/users/{created.json['id']}"  # type: ignore[index]
            before = _served(tenancy)
            blind = client.get(path, headers=headers)
            assert blind.status_code in (200, 404)
            if blind.status_code == 404:  # a replica 1.5 s behind answered: stale, as allowed
                assert _served(tenancy) == before + 1
                stale += 1
            # With the token: never stale, whoever answers.
            assert (
                client.get(path, headers={**headers, "X-Consistency-Token": token}).status_code
                == 200
            )
        assert stale >= 1, "no read was served by the delayed replica"
        # Once the replica has replayed it, a token's read is served there.
        position = parse_token([token]).position  # type: ignore[union-attr]
        wait_for_replica(tenancy, position, tenants=(tenant.id,))
        before = _served(tenancy)
        answer = client.get(path, headers={**headers, "X-Consistency-Token": token})
        assert answer.status_code == 200
        assert _served(tenancy) == before + 1


def _read_under_load(
    app: Flask, tenant: ProvisionedTenant, user: str, seconds: float, act: Callable[[], None]
) -> tuple[float, list[tuple[float, int, str | None]]]:
    """GETs from 3 threads for ``seconds``; ``act()`` runs after 1 s. (act's time, answers)."""
    answers: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def reader() -> None:
        client: FlaskClient = app.test_client()
        while not stop.is_set():
            response = client.get(f"/v1/users/{user}", headers=auth_headers(tenant))
            answers.append(
                (time.monotonic(), response.status_code, response.headers.get("Retry-After"))
            )

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    acted_at = time.monotonic()
    act()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    return acted_at, answers


@pytest.mark.soak  # make test runs the same through gunicorn: tests/e2e/test_replicas.py
def test_replica_stopped_under_read_load_reads_are_2xx_again_within_5s(
    primary_env: dict[str, str], make_replica: MakeStandby
) -> None:
    standby = make_replica()
    with replica_app(primary_env, standby) as app:
        tenant, user = _tenant_with_a_user(app)
        stopped_at, answers = _read_under_load(
            app, tenant, user, LEAVES_WITHIN + 1, lambda: standby.stop("immediate")
        )
    failed = [at - stopped_at for at, status, _ in answers if status != 200]
    print(  # the figures the note quotes (pytest -s)
        f"replica stopped under read load: {len(answers)} reads, {len(failed)} not 2xx, "
        f"last at {max(failed, default=0.0):.2f} s after the stop"
    )
    statuses = {status for _, status, _ in answers}
    assert statuses <= {200, 503}, statuses  # never a 500
    assert all(retry is not None for _, status, retry in answers if status == 503)
    assert not failed or max(failed) < LEAVES_WITHIN, failed
    assert [s for at, s, _ in answers if at - stopped_at > LEAVES_WITHIN] != []


def _writes(app: Flask, tenant: ProvisionedTenant, stop: threading.Event) -> None:
    client = app.test_client()
    while not stop.wait(0.05):
        client.post(
            "/v1/users", json={"first_name": "w", "last_name": "x"}, headers=auth_headers(tenant)
        )


def _leaves_rotation(tenancy: Tenancy) -> float:
    """Seconds until the replica is out of the rotation; fails past LEAVES_WITHIN."""
    assert tenancy.replicas is not None
    started = time.monotonic()
    while tenancy.replicas.rotation.choose("default") is not None:
        if time.monotonic() - started > LEAVES_WITHIN:
            pytest.fail(f"still in the rotation: {tenancy.replicas.status()}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_replica_lagging_leaves_the_rotation_and_reads_go_to_the_primary(
    primary_env: dict[str, str], make_replica: MakeStandby
) -> None:
    standby = make_replica()
    with replica_app(primary_env, standby, max_lag=2.5) as app:
        tenancy = tenancy_of(app)
        tenant, user = _tenant_with_a_user(app)
        set_apply_delay(standby, 30_000)
        stop = threading.Event()
        writer = threading.Thread(target=_writes, args=(app, tenant, stop))
        writer.start()
        try:
            _leaves_rotation(tenancy)
            before = _served(tenancy)
            assert (
                app.test_client().get(f"/v1/users/{user}", headers=auth_headers(tenant)).status_code
                == 200
            )
            assert _served(tenancy) == before  # the primary answered
        finally:
            stop.set()
            writer.join(timeout=30)
        set_apply_delay(standby, 0)
        wait_for_replica(tenancy)  # back once it has caught up


def test_replica_promoted_leaves_the_rotation(
    primary_env: dict[str, str], make_replica: MakeStandby
) -> None:
    standby = make_replica()
    with replica_app(primary_env, standby) as app:
        tenancy = tenancy_of(app)
        tenant, user = _tenant_with_a_user(app)
        promote(standby)
        _leaves_rotation(tenancy)
        before = _served(tenancy)
        assert (
            app.test_client().get(f"/v1/users/{user}", headers=auth_headers(tenant)).status_code
            == 200
        )
        assert _served(tenancy) == before
