"""CRUD and cross-tenant isolation, for every tenant-scoped resource, through the app."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from app.tenancy.control.provisioning import ProvisionedTenant
from tests.support import auth_headers

RESOURCES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # path: (create payload, patch payload)
    "/v1/users": ({"first_name": "Ada", "last_name": "Lovelace"}, {"last_name": "Byron"}),
    "/v1/internal/users": ({"first_name": "Alan", "last_name": "Turing"}, {"confirmed": True}),
    "/v1/products": ({"name": "Widget", "price": "9.99", "stock": 3}, {"stock": 4}),
}
resource_paths = pytest.mark.parametrize("path", list(RESOURCES))


def _create(client: FlaskClient, tenant: ProvisionedTenant, path: str) -> dict[str, Any]:
    response = client.post(path, json=RESOURCES[path][0], headers=auth_headers(tenant))
    assert response.status_code == 201, response.json
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


@resource_paths
def test_resource_create_then_get(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, path: str
) -> None:
    created = _create(serving_client, tenant_a, path)
    response = serving_client.get(f"{path}/{created['id']}", headers=auth_headers(tenant_a))
    assert response.status_code == 200
    assert response.json == created


@resource_paths
def test_resource_create_sets_location(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, path: str
) -> None:
    response = serving_client.post(path, json=RESOURCES[path][0], headers=auth_headers(tenant_a))
    assert response.headers["Location"].endswith(f"{path}/{response.json['id']}")  # type: ignore[index]


@resource_paths
def test_resource_patch_changes_only_given_fields(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, path: str
) -> None:
    created = _create(serving_client, tenant_a, path)
    patch = RESOURCES[path][1]
    response = serving_client.patch(
        f"{path}/{created['id']}", json=patch, headers=auth_headers(tenant_a)
    )
    assert response.status_code == 200
    body = response.json
    assert body is not None
    for key, value in created.items():
        if key in patch:
            assert body[key] == patch[key]
        elif key != "updated_at":
            assert body[key] == value


@resource_paths
def test_resource_delete_removes_the_record(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, path: str
) -> None:
    created = _create(serving_client, tenant_a, path)
    assert (
        serving_client.delete(f"{path}/{created['id']}", headers=auth_headers(tenant_a)).status_code
        == 204
    )
    assert (
        serving_client.get(f"{path}/{created['id']}", headers=auth_headers(tenant_a)).status_code
        == 404
    )


@resource_paths
def test_resource_list_shows_only_own_records(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant, path: str
) -> None:
    mine = _create(serving_client, tenant_a, path)
    _create(serving_client, tenant_b, path)
    body = serving_client.get(path, headers=auth_headers(tenant_a)).json
    assert body is not None
    assert [record["id"] for record in body["records"]] == [mine["id"]]
    assert body["total"] == 1


@resource_paths
@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_resource_other_tenants_record_is_not_found_like_a_random_id(
    serving_client: FlaskClient,
    tenant_a: ProvisionedTenant,
    tenant_b: ProvisionedTenant,
    path: str,
    method: str,
) -> None:
    theirs = _create(serving_client, tenant_b, path)
    kwargs: dict[str, Any] = {"headers": auth_headers(tenant_a)}
    if method == "patch":
        kwargs["json"] = RESOURCES[path][1]
    foreign = getattr(serving_client, method)(f"{path}/{theirs['id']}", **kwargs)
    random = getattr(serving_client, method)(f"{path}/{uuid.uuid4()}", **kwargs)
    assert foreign.status_code == random.status_code == 404
    assert {k: v for k, v in foreign.json.items() if k != "request_id"} == {
        k: v for k, v in random.json.items() if k != "request_id"
    }
    # B's record is untouched.
    after = serving_client.get(f"{path}/{theirs['id']}", headers=auth_headers(tenant_b))
    assert after.status_code == 200
    assert after.json == theirs


@resource_paths
def test_resource_key_of_another_tenant_is_unauthorized(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant, path: str
) -> None:
    headers = {"X-Tenant-ID": str(tenant_b.id), "Authorization": f"Bearer {tenant_a.api_key}"}
    response = serving_client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"


@resource_paths
def test_resource_unknown_tenant_gets_the_same_401_as_a_wrong_key(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, path: str
) -> None:
    unknown = {"X-Tenant-ID": str(uuid.uuid4()), "Authorization": f"Bearer {tenant_a.api_key}"}
    wrong = {"X-Tenant-ID": str(tenant_a.id), "Authorization": "Bearer tpk_" + "x" * 43}
    missing = {"X-Tenant-ID": str(tenant_a.id)}
    bodies = []
    for headers in (unknown, wrong, missing):
        response = serving_client.get(path, headers=headers)
        assert response.status_code == 401
        bodies.append({k: v for k, v in response.json.items() if k != "request_id"})
    assert bodies[0] == bodies[1] == bodies[2]


@resource_paths
@pytest.mark.parametrize(
    "tenant_header", [None, "", "not-a-uuid", "{00000000-0000-0000-0000-000000000001}"]
)
def test_resource_bad_tenant_header_is_400(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, path: str, tenant_header: str | None
) -> None:
    headers = {"Authorization": f"Bearer {tenant_a.api_key}"}
    if tenant_header is not None:
        headers["X-Tenant-ID"] = tenant_header
    response = serving_client.get(path, headers=headers)
    assert response.status_code == 400
    assert response.json["code"] == "invalid_tenant_header"  # type: ignore[index]
