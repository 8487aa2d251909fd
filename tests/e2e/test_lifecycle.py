"""Suspend, resume and delete through the admin API of a real gunicorn, under traffic."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2
import pytest
import requests

from tests.e2e.conftest import Service, tenant_backends

pytestmark = pytest.mark.e2e

# Answers that fail cleanly: a suspended or vanished tenant, or a connection that ended.
CLEAN = {200, 201, 401, 403, 503}


def _admin(service: Service) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.env['APP_ADMIN_TOKEN']}"}


def _create(service: Service) -> dict[str, str]:
    response = requests.post(
        f"{service.url}/v1/admin/tenants",
        json={"name": f"e2e-{uuid.uuid4().hex[:10]}"},
        headers=_admin(service),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return {"X-Tenant-ID": body["id"], "Authorization": f"Bearer {body['api_key']}"}


def _statuses(service: Service, headers: dict[str, str], count: int) -> list[int]:
    def one(_: int) -> int:
        return requests.get(f"{service.url}/v1/users", headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, range(count)))


def _query(superuser_url: str, sql: str, *args: object) -> Any:
    connection = psycopg2.connect(superuser_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchone()[0]  # type: ignore[index]
    finally:
        connection.close()


def _warm_every_worker(service: Service, headers: dict[str, str], superuser_url: str) -> None:
    """Make both workers serve (and so cache) the tenant."""
    deadline = time.monotonic() + 20
    workers: set[str] = set()
    while len(workers) < 2 and time.monotonic() < deadline:
        assert set(_statuses(service, headers, 16)) == {200}
        backends = tenant_backends(superuser_url, headers["X-Tenant-ID"])
        workers |= {name.rsplit(":", 1)[1] for name in backends}
    assert len(workers) == 2, "both workers should have served the tenant"


def test_lifecycle_suspend_reaches_every_worker_within_a_second(
    service: Service, superuser_url: str
) -> None:
    headers = _create(service)
    tenant_id = headers["X-Tenant-ID"]
    admin = f"{service.url}/v1/admin/tenants/{tenant_id}"
    _warm_every_worker(service, headers, superuser_url)

    response = requests.post(f"{admin}/suspend", headers=_admin(service), timeout=30)
    assert response.status_code == 200
    time.sleep(1)
    assert set(_statuses(service, headers, 32)) == {403}

    response = requests.post(f"{admin}/resume", headers=_admin(service), timeout=30)
    assert response.status_code == 200
    time.sleep(1)
    assert set(_statuses(service, headers, 32)) == {200}


def test_lifecycle_delete_during_traffic(service: Service, superuser_url: str) -> None:
    headers = _create(service)
    tenant_id = headers["X-Tenant-ID"]
    role = "t_" + uuid.UUID(tenant_id).hex
    _warm_every_worker(service, headers, superuser_url)
    seen: Counter[int | str] = Counter()
    stop = threading.Event()

    def hammer(number: int) -> None:
        # Half the threads write, so deletion also meets inserts in flight.
        write = number % 2
        method, body = (
            ("POST", {"first_name": "in", "last_name": "flight"}) if write else ("GET", None)
        )
        while not stop.is_set():
            try:
                response = requests.request(
                    method, f"{service.url}/v1/users", json=body, headers=headers, timeout=30
                )
            except requests.RequestException as error:
                seen[type(error).__name__] += 1
            else:
                seen[response.status_code] += 1

    threads = [threading.Thread(target=hammer, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        response = requests.delete(
            f"{service.url}/v1/admin/tenants/{tenant_id}", headers=_admin(service), timeout=60
        )
        assert response.status_code == 204, response.text
        # Traffic goes on while every worker hears the change event (within a second).
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    assert set(seen) <= CLEAN, f"unclean answers during deletion: {seen}"
    assert seen[200] + seen[201] > 0
    assert set(_statuses(service, headers, 16)) == {401}
    assert _query(superuser_url, "SELECT count(*) FROM pg_roles WHERE rolname = %s", role) == 0
    assert _query(superuser_url, "SELECT count(*) FROM tenants WHERE id = %s", tenant_id) == 0
    assert _query(superuser_url, "SELECT count(*) FROM users WHERE tenant_id = %s", tenant_id) == 0
    assert (
        _query(superuser_url, "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", role) == 0
    )
