"""End users' JWTs through the API, in both ways of serving, against a JWKS on loopback.

A token names its tenant in a claim; ``X-Tenant-ID`` is optional and must agree. Every bad
token gets the API key's answers (401, 403 when suspended). On ``orders`` a user without
the admin role sees, changes and deletes only the orders they created; the admin role and
API keys see all of the tenant's.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.tenancy import tenancy_of
from app.tenancy.control.provisioning import ProvisionedTenant, resume_tenant, suspend_tenant
from tests.idp import Idp
from tests.support import auth_headers

PROBLEM = "application/problem+json"


def _token(idp: Idp, tenant: ProvisionedTenant, **claims: Any) -> str:
    return idp.token(tenant_id=str(tenant.id), **claims)


def _as(token: str, tenant: ProvisionedTenant | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if tenant is not None:
        headers["X-Tenant-ID"] = str(tenant.id)
    return headers


def _user(client: FlaskClient, tenant: ProvisionedTenant, name: str) -> dict[str, Any]:
    response = client.post(
        "/v1/users", json={"first_name": name, "last_name": "X"}, headers=auth_headers(tenant)
    )
    assert response.status_code == 201, response.json
    record: dict[str, Any] = response.json
    return record


def _refused(response: TestResponse, status: int) -> None:
    assert response.status_code == status, response.json
    assert response.mimetype == PROBLEM


def test_end_users_jwt_reads_its_tenants_rows_with_or_without_the_header(
    jwt_client: FlaskClient, jwt_idp: Idp, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> None:
    mine = _user(jwt_client, tenant_a, "Ada")
    _user(jwt_client, tenant_b, "Bob")
    token = _token(jwt_idp, tenant_a)
    for headers in (_as(token), _as(token, tenant_a)):
        response = jwt_client.get("/v1/users", headers=headers)
        assert response.status_code == 200, response.json
        assert [user["id"] for user in response.json["records"]] == [mine["id"]]


def test_end_users_jwt_with_another_tenants_header_is_401(
    jwt_client: FlaskClient, jwt_idp: Idp, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> None:
    _user(jwt_client, tenant_b, "Bob")
    response = jwt_client.get("/v1/users", headers=_as(_token(jwt_idp, tenant_a), tenant_b))
    _refused(response, 401)


@pytest.mark.parametrize(
    "claims",
    [
        {"tenant_id": "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b"},  # no such tenant
        {"tenant_id": None},
        {"iss": "https://evil.example.test/"},
        {"aud": "another-service"},
        {"exp": 1},
    ],
    ids=["unknown-tenant", "missing-claim", "wrong-issuer", "wrong-audience", "expired"],
)
def test_end_users_bad_tokens_get_the_api_keys_401(
    jwt_client: FlaskClient, jwt_idp: Idp, claims: dict[str, Any]
) -> None:
    response = jwt_client.get("/v1/users", headers=_as(jwt_idp.token(**claims)))
    _refused(response, 401)
    assert response.json["detail"] == "missing or invalid credentials for this tenant"


def test_end_users_suspended_tenant_is_403(
    jwt_client: FlaskClient, jwt_app: Any, jwt_idp: Idp, tenant_a: ProvisionedTenant
) -> None:
    clusters = tenancy_of(jwt_app).clusters
    suspend_tenant(clusters, tenant_a.id, actor="test")
    try:
        tenancy_of(jwt_app).directory.invalidate(tenant_a.id)
        response = jwt_client.get("/v1/users", headers=_as(_token(jwt_idp, tenant_a)))
        _refused(response, 403)
    finally:
        resume_tenant(clusters, tenant_a.id, actor="test")
        tenancy_of(jwt_app).directory.invalidate(tenant_a.id)


def test_end_users_api_keys_work_as_before(
    jwt_client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    mine = _user(jwt_client, tenant_a, "Ada")
    response = jwt_client.get("/v1/users", headers=auth_headers(tenant_a))
    assert [user["id"] for user in response.json["records"]] == [mine["id"]]
    _refused(jwt_client.get("/v1/users", headers={"Authorization": "Bearer tpk_x"}), 400)


def test_end_users_token_without_the_write_scope_reads_but_may_not_write(
    jwt_client: FlaskClient, jwt_idp: Idp, tenant_a: ProvisionedTenant
) -> None:
    reader = _as(_token(jwt_idp, tenant_a, scope="read"))
    assert jwt_client.get("/v1/users", headers=reader).status_code == 200
    body = {"first_name": "A", "last_name": "B"}
    response = jwt_client.post("/v1/users", json=body, headers=reader)
    _refused(response, 403)
    assert response.json["code"] == "read_only_token"
    writer = _as(_token(jwt_idp, tenant_a, scope="read write"))
    created = jwt_client.post("/v1/users", json=body, headers=writer)
    assert created.status_code == 201, created.json


def _order_of(
    client: FlaskClient, tenant: ProvisionedTenant, headers: dict[str, str]
) -> dict[str, Any]:
    """An order made with ``headers``, of a user and product the tenant's API key made."""
    user = _user(client, tenant, "Ada")
    product = client.post(
        "/v1/products", json={"name": "Widget", "price": "1.00"}, headers=auth_headers(tenant)
    ).json
    response = client.post(
        "/v1/orders",
        json={"user_id": user["id"], "product_id": product["id"], "quantity": 1},
        headers=headers,
    )
    assert response.status_code == 201, response.json
    order: dict[str, Any] = response.json
    return order


def test_end_users_see_only_their_own_orders_and_admins_see_all(
    jwt_client: FlaskClient, jwt_idp: Idp, tenant_a: ProvisionedTenant
) -> None:
    def user(sub: str, *roles: str) -> dict[str, str]:
        return _as(_token(jwt_idp, tenant_a, sub=sub, roles=list(roles), scope="write"))

    one, two, admin = user("user-1", "member"), user("user-2", "member"), user("boss", "admin")
    order = _order_of(jwt_client, tenant_a, one)
    by_key = _order_of(jwt_client, tenant_a, auth_headers(tenant_a))
    assert order["created_by"] == "user-1"
    assert by_key["created_by"] is None
    path = f"/v1/orders/{order['id']}"

    def listed(headers: dict[str, str]) -> set[str]:
        response = jwt_client.get("/v1/orders", headers=headers)
        assert response.status_code == 200, response.json
        return {item["id"] for item in response.json["records"]}

    assert listed(one) == {order["id"]}
    assert listed(two) == set()
    assert listed(admin) == listed(auth_headers(tenant_a)) == {order["id"], by_key["id"]}
    assert jwt_client.get(path, headers=one).status_code == 200
    assert jwt_client.get(path, headers=admin).status_code == 200
    # User 2 can neither read, change nor delete it: not found, as a random id would be.
    assert jwt_client.get(path, headers=two).status_code == 404
    assert jwt_client.patch(path, json={"quantity": 9}, headers=two).status_code == 404
    assert jwt_client.delete(path, headers=two).status_code == 404
    assert jwt_client.get(path, headers=one).json["quantity"] == 1
    assert jwt_client.patch(path, json={"quantity": 3}, headers=one).json["quantity"] == 3
    assert jwt_client.delete(path, headers=one).status_code == 204
