"""The whole service through a real gunicorn (2 workers x 4 threads) and two seeded tenants."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.e2e.conftest import SeededTenant, Service, tenant_backends

pytestmark = pytest.mark.e2e

PAYLOADS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "/v1/users": ({"first_name": "Grace", "last_name": "Hopper"}, {"confirmed": True}),
    "/v1/internal/users": ({"first_name": "Ken", "last_name": "Thompson"}, {"last_name": "T"}),
    "/v1/products": ({"name": "Gizmo", "price": 12.5, "stock": 7}, {"price": "13.00"}),
}
paths = pytest.mark.parametrize("path", list(PAYLOADS))


def _create(service: Service, tenant: SeededTenant, path: str) -> dict[str, Any]:
    response = requests.post(
        service.url + path, json=PAYLOADS[path][0], headers=tenant.headers, timeout=10
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@paths
def test_service_every_endpoint_for_both_tenants(
    service: Service, seeded: list[SeededTenant], path: str
) -> None:
    for tenant in seeded:
        created = _create(service, tenant, path)
        item = f"{service.url}{path}/{created['id']}"
        assert requests.get(item, headers=tenant.headers, timeout=10).json() == created
        listed = requests.get(service.url + path, headers=tenant.headers, timeout=10).json()
        assert created["id"] in {record["id"] for record in listed["records"]}
        patched = requests.patch(item, json=PAYLOADS[path][1], headers=tenant.headers, timeout=10)
        assert patched.status_code == 200
        assert requests.delete(item, headers=tenant.headers, timeout=10).status_code == 204
        assert requests.get(item, headers=tenant.headers, timeout=10).status_code == 404


@paths
def test_service_tenant_never_reaches_another_tenants_rows(
    service: Service, seeded: list[SeededTenant], path: str
) -> None:
    tenant_a, tenant_b = seeded
    theirs = _create(service, tenant_b, path)
    listed = requests.get(
        service.url + path, params={"page_size": 100}, headers=tenant_a.headers, timeout=10
    ).json()
    assert theirs["id"] not in {record["id"] for record in listed["records"]}
    for method in ("get", "patch", "delete"):
        kwargs: dict[str, Any] = {"headers": tenant_a.headers}
        if method == "patch":
            kwargs["json"] = PAYLOADS[path][1]
        foreign = requests.request(
            method, f"{service.url}{path}/{theirs['id']}", timeout=10, **kwargs
        )
        random = requests.request(
            method, f"{service.url}{path}/{uuid.uuid4()}", timeout=10, **kwargs
        )
        assert foreign.status_code == random.status_code == 404
        assert _without_request_id(foreign.json()) == _without_request_id(random.json())
    after = requests.get(
        f"{service.url}{path}/{theirs['id']}", headers=tenant_b.headers, timeout=10
    )
    assert after.json() == theirs


def _without_request_id(problem: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in problem.items() if key != "request_id"}


def test_service_key_of_a_with_tenant_b_is_401(
    service: Service, seeded: list[SeededTenant]
) -> None:
    tenant_a, tenant_b = seeded
    headers = {"X-Tenant-ID": tenant_b.id, "Authorization": f"Bearer {tenant_a.api_key}"}
    response = requests.get(service.url + "/v1/users", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    "tenant_header",
    [None, "", "nope", "{" + str(uuid.UUID(int=1)) + "}", "urn:uuid:" + str(uuid.UUID(int=1))],
)
def test_service_missing_or_malformed_tenant_header_is_400(
    service: Service, seeded: list[SeededTenant], tenant_header: str | None
) -> None:
    headers = {"Authorization": f"Bearer {seeded[0].api_key}"}
    if tenant_header is not None:
        headers["X-Tenant-ID"] = tenant_header
    response = requests.get(service.url + "/v1/users", headers=headers, timeout=10)
    assert response.status_code == 400


@pytest.mark.parametrize("sort_column", ["password", "tenant_id", "1; DROP TABLE users", "id desc"])
def test_service_unknown_sort_column_is_4xx(
    service: Service, seeded: list[SeededTenant], sort_column: str
) -> None:
    response = requests.get(
        service.url + "/v1/users",
        params={"sort_column": sort_column},
        headers=seeded[0].headers,
        timeout=10,
    )
    assert 400 <= response.status_code < 500


def test_service_pagination_through_gunicorn(service: Service, seeded: list[SeededTenant]) -> None:
    tenant = seeded[0]
    body = requests.get(
        service.url + "/v1/users", params={"page_size": 2}, headers=tenant.headers, timeout=10
    ).json()
    assert body["page_size"] == 2
    assert body["total_pages"] == -(-body["total"] // 2)


def test_service_health_endpoints(service: Service) -> None:
    for path in ("/healthz", "/readyz", "/health_check", "/openapi.json"):
        response = requests.get(service.url + path, timeout=10)
        assert response.status_code == 200
        assert response.headers["X-Request-ID"]


def test_service_reaper_runs_in_every_worker(
    service: Service, seeded: list[SeededTenant], superuser_url: str
) -> None:
    """Both workers open the tenant's engine; both reapers then dispose it (idle_ttl = 1 s)."""
    tenant = seeded[1]
    deadline = time.monotonic() + 20
    worker_pids: set[str] = set()

    def hit(_: int) -> int:
        return requests.get(
            service.url + "/v1/users", headers=tenant.headers, timeout=10
        ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        while len(worker_pids) < 2 and time.monotonic() < deadline:
            assert set(pool.map(hit, range(16))) == {200}
            worker_pids |= {
                name.rsplit(":", 1)[1] for name in tenant_backends(superuser_url, tenant.id)
            }
    assert len(worker_pids) == 2, "both workers should have served the tenant"
    while tenant_backends(superuser_url, tenant.id) and time.monotonic() < deadline + 10:
        time.sleep(0.2)
    assert tenant_backends(superuser_url, tenant.id) == set()
