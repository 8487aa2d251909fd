"""The shared way through a real gunicorn (2 workers x 4 threads): isolation, bounded backends."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2
import pytest
import requests

from tests.e2e.conftest import SeededTenant, Service, seed, start_service, stop_service

pytestmark = pytest.mark.e2e

WORKERS, THREADS, GATEWAY_POOL = 2, 4, 2
TENANTS = 24


@pytest.fixture(scope="module")
def shared_service(
    app_env: dict[str, str], migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    env = {**app_env, "APP_SERVING": "shared", "APP_GATEWAY_POOL_SIZE": str(GATEWAY_POOL)}
    log_path = tmp_path_factory.mktemp("gunicorn-shared") / "gunicorn.log"
    process, running = start_service(env, log_path, workers=WORKERS, threads=THREADS)
    yield running
    stop_service(process)


@pytest.fixture(scope="module")
def many(
    app_env: dict[str, str], migrated: None, tmp_path_factory: pytest.TempPathFactory
) -> list[SeededTenant]:
    output = tmp_path_factory.mktemp("seed-shared") / "tenants.json"
    return seed(app_env, output, count=TENANTS, prefix="shared", users_per_tenant=3)


def _workers(master: int) -> list[str]:
    """The pids of a gunicorn master's workers, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == master:
                found.append(stat.parent.name)
    return found


def _backends(superuser_url: str, service: Service) -> dict[str, int]:
    """This service's backends on the server now, by kind (tenant role, gateway, other)."""
    connection = psycopg2.connect(superuser_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT CASE WHEN usename ~ '^t_' THEN 'tenant' "
                "WHEN usename ~ '^tp_gateway_' THEN 'gateway' ELSE 'other' END, count(*) "
                "FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND split_part(application_name, ':', 1) = 'tp' "
                "AND split_part(application_name, ':', 3) = ANY(%s) GROUP BY 1",
                (_workers(service.pid),),
            )
            return dict(cursor.fetchall())
    finally:
        connection.close()


def test_shared_service_keeps_tenants_apart(
    shared_service: Service, many: list[SeededTenant]
) -> None:
    tenant_a, tenant_b = many[:2]
    theirs = requests.post(
        f"{shared_service.url}/v1/users",
        json={"first_name": "Barbara", "last_name": "Liskov"},
        headers=tenant_b.headers,
        timeout=10,
    ).json()
    listed = requests.get(
        f"{shared_service.url}/v1/users",
        params={"page_size": 100},
        headers=tenant_a.headers,
        timeout=10,
    ).json()
    assert theirs["id"] not in {record["id"] for record in listed["records"]}
    for method in ("get", "patch", "delete"):
        kwargs = {"json": {"last_name": "X"}} if method == "patch" else {}
        foreign = requests.request(
            method,
            f"{shared_service.url}/v1/users/{theirs['id']}",
            headers=tenant_a.headers,
            timeout=10,
            **kwargs,
        )
        random = requests.request(
            method,
            f"{shared_service.url}/v1/users/{uuid.uuid4()}",
            headers=tenant_a.headers,
            timeout=10,
            **kwargs,
        )
        assert foreign.status_code == random.status_code == 404
    mine = requests.get(
        f"{shared_service.url}/v1/users/{theirs['id']}", headers=tenant_b.headers, timeout=10
    )
    assert mine.json() == theirs


def test_shared_service_serves_many_tenants_on_a_fixed_number_of_backends(
    shared_service: Service, many: list[SeededTenant], superuser_url: str
) -> None:
    """Every tenant answered, none logged in as itself, gateways within their pools."""

    def read(tenant: SeededTenant) -> tuple[int, set[str]]:
        response = requests.get(
            f"{shared_service.url}/v1/users", headers=tenant.headers, timeout=10
        )
        return response.status_code, {r["id"] for r in response.json().get("records", [])}

    untouched = many[2:-1]  # the other tests add rows to the first two, suspend the last
    peak: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            results = list(pool.map(read, untouched))
            for kind, count in _backends(superuser_url, shared_service).items():
                peak[kind] = max(peak.get(kind, 0), count)
    assert {status for status, _ in results} == {200}
    seen = [ids for _, ids in results]
    assert all(len(ids) == 3 for ids in seen)  # each tenant its own 3 users...
    assert len(set().union(*seen)) == 3 * len(untouched)  # ...and nobody else's
    assert peak.get("tenant", 0) == 0
    assert 0 < peak.get("gateway", 0) <= WORKERS * GATEWAY_POOL


def test_shared_service_suspended_tenant_is_refused_by_every_worker(
    shared_service: Service, many: list[SeededTenant], app_env: dict[str, str]
) -> None:
    tenant = many[-1]
    admin = {"Authorization": f"Bearer {app_env['APP_ADMIN_TOKEN']}"}
    url = f"{shared_service.url}/v1/admin/tenants/{tenant.id}"
    assert requests.post(f"{url}/suspend", headers=admin, timeout=10).status_code == 200
    try:
        statuses = {
            requests.get(
                f"{shared_service.url}/v1/users", headers=tenant.headers, timeout=10
            ).status_code
            for _ in range(4 * WORKERS)
        }
        assert statuses == {403}
    finally:
        assert requests.post(f"{url}/resume", headers=admin, timeout=10).status_code == 200
