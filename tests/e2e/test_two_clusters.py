"""The service with tenants on two PostgreSQL servers, and a tenant moved under write load.

Tenant A lives on ``default`` (the control plane's server), B on ``c2`` (another server);
the endpoint and isolation tests of test_service.py run again with this module's
``service`` and ``seeded``. Tenant M is moved from ``default`` to ``c2`` by the real
``flask tenants move`` while clients keep writing to it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.conftest import REPO_ROOT, SeededTenant, Service, seed, start_service, stop_service
from tests.e2e.test_service import (  # noqa: F401  (collected again, across two clusters)
    test_service_every_endpoint_for_both_tenants,
    test_service_tenant_never_reaches_another_tenants_rows,
)
from tests.support import Inspector

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tenants(
    two_clusters_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, SeededTenant]:
    """A and M on ``default``, B on ``c2``, each with 3 users, by the real seed command."""
    out = tmp_path_factory.mktemp("seed-clusters")
    a, m = seed(two_clusters_env, out / "default.json", count=2, prefix="cl-default")
    (b,) = seed(two_clusters_env, out / "c2.json", count=1, prefix="cl-c2", cluster="c2")
    return {"a": a, "b": b, "m": m}


@pytest.fixture(scope="module")
def seeded(tenants: dict[str, SeededTenant]) -> list[SeededTenant]:
    return [tenants["a"], tenants["b"]]


@pytest.fixture(scope="module")
def service(
    two_clusters_env: dict[str, str],
    tenants: dict[str, SeededTenant],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    log_path = tmp_path_factory.mktemp("gunicorn-clusters") / "gunicorn.log"
    process, running = start_service(two_clusters_env, log_path, workers=2, threads=4)
    yield running
    stop_service(process)


def _user_counts(inspect: Inspector, cluster: str, tenant: SeededTenant) -> Counter[str]:
    """Rows per user id of ``tenant`` on one cluster, as the superuser sees them."""
    query = "SELECT id::text, count(*) FROM users WHERE tenant_id = %s GROUP BY id"
    return Counter(dict(inspect.rows(cluster, query, tenant.id)))


class _Writers:
    """Clients creating users for one tenant; a 503 is retried, a 201 goes in the ledger."""

    def __init__(self, service: Service, tenant: SeededTenant, count: int) -> None:
        self.url = f"{service.url}/v1/users"
        self.tenant = tenant
        self.ledger: list[str] = []
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._write, args=(number,), daemon=True)
            for number in range(count)
        ]

    def __enter__(self) -> _Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def wait_for(self, acknowledged: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ledger) < acknowledged:
            assert time.monotonic() < deadline, f"only {len(self.ledger)} writes acknowledged"
            time.sleep(0.05)

    def _write(self, writer: int) -> None:
        sequence = 0
        while not self._stop.is_set():
            body = {"first_name": f"Writer{writer}", "last_name": f"n{sequence}"}
            try:
                response = requests.post(
                    self.url, json=body, headers=self.tenant.headers, timeout=30
                )
            except requests.RequestException:
                with self._lock:
                    self.statuses[0] += 1
                continue
            with self._lock:
                self.statuses[response.status_code] += 1
            if response.status_code == 201:
                self.ledger.append(response.json()["id"])
                sequence += 1
                time.sleep(0.02)  # a light load
            elif response.status_code == 503:
                # The client retries; sooner than Retry-After asks, to keep the test short.
                time.sleep(0.1)


def test_clusters_move_under_write_load_loses_no_acknowledged_write(
    service: Service,
    tenants: dict[str, SeededTenant],
    two_clusters_env: dict[str, str],
    inspect: Inspector,
) -> None:
    mover = tenants["m"]
    seeded_rows = sum(_user_counts(inspect, "default", mover).values())
    with _Writers(service, mover, count=2) as writers:
        writers.wait_for(10)
        moved = subprocess.run(
            [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "wsgi",
                "tenants",
                "move",
                mover.id,
                "--to",
                "c2",
                "--batch-size",
                "5",
            ],
            cwd=REPO_ROOT,
            env={**os.environ, **two_clusters_env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert moved.returncode == 0, moved.stderr
        # Writes go on, to the new cluster, once every worker has dropped the old engine.
        writers.wait_for(len(writers.ledger) + 10)
    assert set(writers.statuses) <= {201, 503}, writers.statuses
    assert re.search(r"copying users: \d+/\d+ \(100%\) done", moved.stderr)  # progress shown
    on_target = _user_counts(inspect, "c2", mover)
    assert all(on_target[user_id] == 1 for user_id in writers.ledger)
    assert sum(on_target.values()) == seeded_rows + len(writers.ledger)
    assert _user_counts(inspect, "default", mover) == Counter()
    listed: set[str] = set()
    for page in range(1, 100):
        body = requests.get(
            f"{service.url}/v1/users",
            params={"page": page, "page_size": 100},
            headers=mover.headers,
            timeout=10,
        ).json()
        listed |= {record["id"] for record in body["records"]}
        if page >= body["total_pages"]:
            break
    assert set(writers.ledger) <= listed
