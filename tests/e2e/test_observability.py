"""What an operator looks at, on a real gunicorn with several workers.

- Every metric the dashboard's queries and the alert rules name is exported by the running
  service (after a few requests).
- The per-tenant view equals what pg_stat_activity shows while tenant connections are held
  open in several workers (dedicated and shared), and the command line shows the same.
- A worker killed is counted as such (the worker-restarts alert's metric).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    SeededTenant,
    Service,
    start_service,
    stop_service,
)
from tests.promql import PROMETHEUS_SERIES, names_used
from tests.support import REPO_ROOT, backends_by_worker

pytestmark = pytest.mark.e2e

HELD = 3
"""Requests held open at once (fewer than a worker's threads: each worker keeps a free one)."""


def _scrape(service: Service) -> str:
    response = requests.get(service.url + "/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def _sample_names(text: str) -> set[str]:
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def _wait_for(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_every_dashboard_and_alert_metric_is_exported(
    service: Service, seeded: list[SeededTenant]
) -> None:
    admin = {"Authorization": f"Bearer {service.env['APP_ADMIN_TOKEN']}"}
    for tenant in seeded:
        for _ in range(3):
            assert requests.get(service.url + "/v1/users", headers=tenant.headers, timeout=10).ok
        created = requests.post(
            service.url + "/v1/products",
            json={"name": "gauge", "price": "1.00", "stock": 1},
            headers=tenant.headers,
            timeout=10,
        )
        assert created.status_code == 201
        stats = requests.get(
            f"{service.url}/v1/admin/tenants/{tenant.id}/stats", headers=admin, timeout=30
        )
        assert stats.status_code == 200

    def all_there() -> bool:  # an idle eviction (APP_IDLE_TTL=1) and a reaper's top file
        return names_used() - PROMETHEUS_SERIES <= _sample_names(_scrape(service))

    _wait_for(all_there, "every metric the dashboard and the rules use")


@dataclass(frozen=True)
class Held:
    """A gunicorn of its own (2 workers x 4 threads) and a tenant seeded for it."""

    service: Service
    tenant: SeededTenant
    mode: str
    workers_dir: Path

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.service.env['APP_ADMIN_TOKEN']}"}

    def stats(self) -> dict[str, Any]:
        response = requests.get(
            f"{self.service.url}/v1/admin/tenants/{self.tenant.id}/stats",
            headers=self.admin,
            timeout=30,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module", params=["dedicated", "shared"])
def held(
    request: pytest.FixtureRequest,
    app_env: dict[str, str],
    migrated: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Held]:
    mode = request.param
    base = tmp_path_factory.mktemp(f"held-{mode}")
    workers_dir = base / "w"
    workers_dir.mkdir()
    env = {
        **app_env,
        "APP_SERVING": mode,
        # Held requests wait on a lock: longer than the test needs, shorter than forever.
        "APP_TENANT_STATEMENT_TIMEOUT_MS": "20000",
        "APP_REAPER_INTERVAL": "0.2",
        "PROMETHEUS_MULTIPROC_DIR": str(workers_dir),
    }
    process, service = start_service(env, base / "gunicorn.log", workers=2, threads=4)
    created = requests.post(  # its role gets this service's statement timeout
        service.url + "/v1/admin/tenants",
        json={"name": f"held-{mode}-{uuid.uuid4().hex[:8]}"},
        headers={"Authorization": f"Bearer {env['APP_ADMIN_TOKEN']}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    tenant = SeededTenant(body["id"], body["name"], body["api_key"])
    yield Held(service, tenant, mode, workers_dir)
    stop_service(process)


def _backends(superuser_url: str, tenant_id: str) -> tuple[dict[int, int], dict[int, int]]:
    """Per worker pid: every backend attributed to the tenant, and those waiting on a lock."""
    found = backends_by_worker(superuser_url, tenant_id)
    return {pid: n for pid, (n, _) in found.items()}, {pid: n for pid, (_, n) in found.items()}


def _per_worker(stats: dict[str, Any], read: Callable[[dict[str, Any]], int]) -> dict[int, int]:
    return {view["pid"]: read(view) for view in stats["workers"] if read(view)}


def _nonzero(counts: dict[int, int]) -> dict[int, int]:
    return {pid: n for pid, n in counts.items() if n}


@contextlib.contextmanager
def _holding(held: Held, superuser_url: str) -> Iterator[list[Future[requests.Response]]]:
    """HELD requests of the tenant blocked on a lock of ``products`` until the block ends."""
    lock = psycopg2.connect(superuser_url)
    pool = ThreadPoolExecutor(HELD)
    try:
        with lock.cursor() as cursor:
            cursor.execute("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        url = held.service.url + "/v1/products"
        # A session each, so that gunicorn's workers take them as they come.
        futures = [
            pool.submit(requests.get, url, headers=held.tenant.headers, timeout=60)
            for _ in range(HELD)
        ]
        _wait_for(
            lambda: sum(_backends(superuser_url, held.tenant.id)[1].values()) == HELD,
            f"{HELD} requests waiting on the lock",
        )
        yield futures
    finally:
        lock.rollback()
        lock.close()
        pool.shutdown(wait=True)


def test_tenant_stats_match_pg_stat_activity_while_connections_are_held(
    held: Held, superuser_url: str
) -> None:
    for _ in range(4):  # warm: connections in the workers that take them
        response = requests.get(
            held.service.url + "/v1/products", headers=held.tenant.headers, timeout=10
        )
        assert response.ok
    with _holding(held, superuser_url) as futures:
        stats = held.stats()
        backends, waiting = _backends(superuser_url, held.tenant.id)

    assert [future.result().status_code for future in futures] == [200] * HELD
    assert len(stats["workers"]) == 2
    assert stats["unanswered_workers"] == []
    assert stats["totals"]["in_flight"] == HELD
    assert _per_worker(stats, lambda view: view["in_flight"]) == _nonzero(waiting)
    if held.mode == "dedicated":
        connections = _per_worker(stats, lambda view: view["connections"]["dedicated_open"])
        in_use = _per_worker(stats, lambda view: view["connections"]["dedicated_in_use"])
        assert {view["way"] for view in stats["workers"]} == {"dedicated"}
    else:  # a shared connection names the tenant only during its transaction
        connections = _per_worker(stats, lambda view: view["connections"]["shared_in_use"])
        in_use = connections
        assert {view["way"] for view in stats["workers"]} == {"shared"}
    assert connections == _nonzero(backends)
    assert in_use == _nonzero(waiting)
    by_worker = {b["pid"]: b["connections"] for b in stats["database"]["by_worker"]}
    assert by_worker == _nonzero(backends)
    assert stats["database"]["connections"] == sum(backends.values())


def test_tenant_stats_after_the_requests_count_them_and_hold_nothing(held: Held) -> None:
    stats = held.stats()

    assert stats["totals"]["in_flight"] == 0
    assert stats["totals"]["connections"]["shared_in_use"] == 0
    assert stats["totals"]["recent"]["requests"] >= 4 + HELD
    assert stats["totals"]["recent"][held.mode] == stats["totals"]["recent"]["requests"]
    assert stats["totals"]["recent"]["server_errors"] == 0


# The command and a worker's death do not depend on the way of serving: one way is enough.
@pytest.mark.parametrize("held", ["dedicated"], indirect=True)
def test_tenants_stats_command_asks_the_running_workers(held: Held) -> None:
    # Not the service's PROMETHEUS_MULTIPROC_DIR: a command would add its own samples there.
    env = {**os.environ, **held.service.env}
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "tenants", "stats"]
    command += ["--workers-dir", str(held.workers_dir)]
    run = functools.partial(
        subprocess.run, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )

    result = run([*command, held.tenant.name], check=False)
    as_json = run([*command, held.tenant.id, "--as-json"], check=True)

    assert result.returncode == 0, result.stderr
    report = json.loads(as_json.stdout)
    pids = sorted(view["pid"] for view in held.stats()["workers"])
    assert sorted(view["pid"] for view in report["workers"]) == pids
    for pid in pids:
        assert f"{pid:>8}  {held.mode}" in result.stdout


def _counter(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.mark.parametrize("held", ["dedicated"], indirect=True)
def test_worker_killed_is_counted_and_its_socket_forgotten(held: Held) -> None:
    before = _scrape(held.service)
    victim = held.stats()["workers"][0]["pid"]

    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        text = _scrape(held.service)
        killed = _counter(text, "tenantpool_worker_exits_total", how="killed")
        starts = _counter(text, "tenantpool_worker_starts_total")
        return killed == _counter(before, "tenantpool_worker_exits_total", how="killed") + 1 and (
            starts == _counter(before, "tenantpool_worker_starts_total") + 1
        )

    _wait_for(replaced, "the killed worker counted and replaced")
    text = _scrape(held.service)
    assert _counter(text, "tenantpool_worker_exits_total", how="graceful") == _counter(
        before, "tenantpool_worker_exits_total", how="graceful"
    )
    assert not (held.workers_dir / f"peer-{victim}.sock").exists()
    _wait_for(lambda: len(held.stats()["workers"]) == 2, "the new worker answering")
    stats = held.stats()
    assert victim not in [view["pid"] for view in stats["workers"]]
    assert stats["unanswered_workers"] == []
