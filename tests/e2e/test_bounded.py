"""Bounded connections at any tenant count, through gunicorn (2 workers x 4 threads).

A cluster of its own with max_connections=40 holds 500 tenants; the service may open at
most workers x budget = 2 x 6 tenant connections however they are hit, answers overload
with 503, never 500, and PostgreSQL never says "too many clients". Three more tenants
are kept out of the load for the change-event and rejected-login tests.
"""

from __future__ import annotations

import os
import random
import re
import secrets
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg2
import pytest
import requests
import sqlalchemy as sa

from app.crypto import Keyring
from app.dev.cluster import LocalCluster
from app.tenancy.serving.events import EventKind, TenantEvent, notify
from config import load_settings, psycopg2_url
from tests.conftest import throwaway_cluster, upgrade_database
from tests.e2e.conftest import SeededTenant, Service, seed, start_service, stop_service
from tests.support import eventually, failed_logins, gunicorn_refusal, set_role_password

pytestmark = pytest.mark.e2e

WORKERS, THREADS = 2, 4
BUDGET = THREADS + 2  # the default APP_CONNECTION_BUDGET
LOAD_TENANTS = 500
LOAD_SECONDS = 20.0


@dataclass(frozen=True)
class Bounded:
    cluster: LocalCluster
    service: Service
    owner_url: str
    tenants: list[SeededTenant]  # the LOAD_TENANTS of the load test
    spare: list[SeededTenant]  # never hit by the load test


@pytest.fixture(scope="module")
def bounded(app_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bounded]:
    with throwaway_cluster(max_connections=40) as cluster:
        owner_url = cluster.bootstrap_owner("tenantpool", secrets.token_urlsafe(24), "tenantpool")
        env = {**app_env, "APP_DATABASE_URL": owner_url}
        upgrade_database(env)
        output = tmp_path_factory.mktemp("bounded") / "tenants.json"
        started = time.monotonic()
        tenants = seed(env, output, count=LOAD_TENANTS + 3, prefix="bounded", users_per_tenant=1)
        print(f"\nseeded {len(tenants)} tenants in {time.monotonic() - started:.1f} s")
        log_path = output.parent / "gunicorn.log"
        process, service = start_service(env, log_path, workers=WORKERS, threads=THREADS)
        try:
            yield Bounded(
                cluster, service, owner_url, tenants[:LOAD_TENANTS], tenants[LOAD_TENANTS:]
            )
        finally:
            stop_service(process)


class Backends:
    """Tenant-role backends of the cluster, by worker pid, as pg_stat_activity shows them."""

    def __init__(self, cluster: LocalCluster) -> None:
        self._connection = psycopg2.connect(cluster.superuser_url("tenantpool"))
        self._connection.autocommit = True

    def by_worker(self, tenant_id: str | None = None) -> Counter[str]:
        pattern = "tp:%:%" if tenant_id is None else f"tp:{tenant_id}:%"
        with self._connection.cursor() as cursor:
            cursor.execute(
                "SELECT application_name FROM pg_stat_activity "
                "WHERE usename LIKE 't\\_%%' AND application_name LIKE %s",
                (pattern,),
            )
            return Counter(name.rsplit(":", 1)[1] for (name,) in cursor.fetchall())

    def close(self) -> None:
        self._connection.close()


def test_bounded_500_tenants_hit_at_random_never_exceed_budget(bounded: Bounded) -> None:
    backends = Backends(bounded.cluster)
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()
    samples: list[int] = []
    over: list[Counter[str]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            seen = backends.by_worker()
            if sum(seen.values()) > WORKERS * BUDGET or max(seen.values(), default=0) > BUDGET:
                # pg_stat_activity is read slot by slot, not at one instant: a backend
                # that exited during the read and its successor can both show. Count it
                # only if a second read a moment later still shows too many.
                time.sleep(0.01)
                seen = backends.by_worker()
                if sum(seen.values()) > WORKERS * BUDGET or max(seen.values()) > BUDGET:
                    over.append(seen)
            samples.append(sum(seen.values()))

    def client(seed: int) -> None:
        chooser = random.Random(seed)
        while not stop.is_set():
            tenant = chooser.choice(bounded.tenants)
            # A connection per request, so that both workers get a share: with keep-alive,
            # whichever worker accepted the clients first would serve them all.
            response = requests.get(
                bounded.service.url + "/v1/users", headers=tenant.headers, timeout=30
            )
            statuses[response.status_code] += 1
            if response.status_code != 200:
                codes[response.json().get("code", "?")] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(client, seed) for seed in range(16)]
        time.sleep(LOAD_SECONDS)
        stop.set()
        for future in futures:
            future.result(timeout=60)
    sampler.join(10)
    time.sleep(0.5)
    after = backends.by_worker()
    backends.close()

    total = sum(statuses.values())
    print(
        f"\n{total} requests in {LOAD_SECONDS:.0f} s ({total / LOAD_SECONDS:.0f}/s): "
        f"{dict(statuses)} {dict(codes)}; tenant backends max {max(samples)}, after {dict(after)}"
    )
    assert set(statuses) <= {200, 503}
    assert statuses[200] > 0
    assert over == []
    assert len(after) == WORKERS, "both workers should have served"
    assert all(count <= BUDGET for count in after.values())
    log = bounded.cluster.log_path.read_text(errors="replace")
    assert "too many clients" not in log
    assert "remaining connection slots" not in log


def test_bounded_killed_worker_drops_out_of_live_gauges(bounded: Bounded) -> None:
    """The load left each worker with a full budget of idle connections; kill one."""
    backends = Backends(bounded.cluster)
    try:
        held = backends.by_worker()
        victim = max(held, key=held.__getitem__)
        assert held[victim] == BUDGET
        os.kill(int(victim), signal.SIGKILL)  # no worker_exit: only the master's child_exit

        def gauge() -> float:
            text = requests.get(bounded.service.url + "/metrics", timeout=10).text
            match = re.search(r"^tenantpool_connection_budget_in_use (\S+)$", text, re.MULTILINE)
            return float(match.group(1)) if match else 0.0

        assert eventually(lambda: gauge() == held.total() - BUDGET, timeout=30)
    finally:
        backends.close()


def test_bounded_event_evicts_tenant_in_every_worker_within_a_second(bounded: Bounded) -> None:
    tenant = bounded.spare[0]
    backends = Backends(bounded.cluster)
    deadline = time.monotonic() + 30

    def hit(_: int) -> int:
        return requests.get(
            bounded.service.url + "/v1/users", headers=tenant.headers, timeout=10
        ).status_code

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            while len(backends.by_worker(tenant.id)) < WORKERS and time.monotonic() < deadline:
                assert set(pool.map(hit, range(16))) == {200}
        assert len(backends.by_worker(tenant.id)) == WORKERS, "both workers should hold A"

        # A real rotation (events are hints: a worker evicts only what the control plane
        # shows changed), made as `flask tenants rotate` would, then its event.
        settings = load_settings(bounded.service.env)
        keyring = Keyring(settings.encryption_keys, settings.encryption_active_key)
        engine = sa.create_engine(psycopg2_url(bounded.owner_url), poolclass=sa.pool.NullPool)
        set_role_password(engine, uuid.UUID(tenant.id), keyring)
        with engine.begin() as connection:
            notify(connection, TenantEvent(EventKind.CREDENTIALS_ROTATED, uuid.UUID(tenant.id)))
        engine.dispose()
        sent = time.monotonic()
        while backends.by_worker(tenant.id) and time.monotonic() - sent < 10:
            time.sleep(0.01)
        elapsed = time.monotonic() - sent
        left = backends.by_worker(tenant.id)
    finally:
        backends.close()

    print(f"\nevicted in every worker {elapsed * 1000:.0f} ms after the NOTIFY")
    assert left == Counter()
    assert elapsed < 1.0
    metrics = requests.get(bounded.service.url + "/metrics", timeout=10).text
    assert 'tenantpool_tenant_engines_evicted_total{reason="credentials_rotated"} 2.0' in metrics


def test_bounded_rejected_password_is_503_without_login_storm(bounded: Bounded) -> None:
    broken, healthy = bounded.spare[1], bounded.spare[2]
    engine = sa.create_engine(psycopg2_url(bounded.owner_url), poolclass=sa.pool.NullPool)
    set_role_password(engine, uuid.UUID(broken.id))  # behind the service's back
    engine.dispose()
    log_path = bounded.cluster.log_path
    before = failed_logins(log_path, uuid.UUID(broken.id))
    results: dict[str, Counter[tuple[int, str]]] = {"broken": Counter(), "healthy": Counter()}
    stop = threading.Event()

    def client(name: str, tenant: SeededTenant) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.get(
                    bounded.service.url + "/v1/users", headers=tenant.headers, timeout=30
                )
                code = "" if response.status_code == 200 else response.json()["code"]
                results[name][(response.status_code, code)] += 1

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(client, "broken", broken) for _ in range(4)]
        futures += [pool.submit(client, "healthy", healthy) for _ in range(2)]
        time.sleep(10)
        stop.set()
        for future in futures:
            future.result(timeout=60)
    time.sleep(0.2)  # the server writes its log line as the backend exits
    failures = failed_logins(log_path, uuid.UUID(broken.id)) - before

    print(f"\n{dict(results['broken'])}; {failures} failed logins in 10 s")
    assert set(results["broken"]) == {(503, "credentials_rejected")}
    assert set(results["healthy"]) == {(200, "")}
    assert 1 <= failures <= 2 * WORKERS


def test_bounded_service_refuses_to_start_when_connections_cannot_fit(
    app_env: dict[str, str], bounded: Bounded
) -> None:
    # 37 free slots (40 - 3 reserved); 4 workers x (6 + 4 control + 1 listener) = 44.
    env = {
        **app_env,
        "APP_DATABASE_URL": bounded.owner_url,
        "APP_WORKERS": "4",
        "APP_THREADS": str(THREADS),
    }

    assert gunicorn_refusal(env) == [
        "tenantpool: not starting: 4 workers x 11 connections = 44 exceed the 37 that "
        f"127.0.0.1:{bounded.cluster.port} allows (max_connections 40 - reserved 3); lower "
        "APP_WORKERS, APP_CONNECTION_BUDGET or APP_GATEWAY_POOL_SIZE, or raise "
        "max_connections (docs/operations.md, Sizing)"
    ]
