"""``/v1/orders``: references that stay inside the tenant, in every way of serving it.

An order names a user and a product of its tenant. Another tenant's user or product is
refused exactly like one that does not exist (422 naming the field, no existence oracle),
and another tenant never sees, changes or deletes the order.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from app.tenancy.control.provisioning import ProvisionedTenant
from tests.support import auth_headers


def _post(client: FlaskClient, tenant: ProvisionedTenant, path: str, body: dict[str, Any]) -> Any:
    return client.post(path, json=body, headers=auth_headers(tenant))


def _created(
    client: FlaskClient, tenant: ProvisionedTenant, path: str, body: dict[str, Any]
) -> dict[str, Any]:
    response = _post(client, tenant, path, body)
    assert response.status_code == 201, response.json
    record: dict[str, Any] = response.json
    return record


def _user_and_product(client: FlaskClient, tenant: ProvisionedTenant) -> dict[str, str]:
    """A user and a product of ``tenant``: what an order of it may name."""
    user = _created(client, tenant, "/v1/users", {"first_name": "Ada", "last_name": "Lovelace"})
    product = _created(client, tenant, "/v1/products", {"name": "Widget", "price": "9.99"})
    return {"user_id": user["id"], "product_id": product["id"]}


def _order(client: FlaskClient, tenant: ProvisionedTenant, **fields: Any) -> dict[str, Any]:
    return _created(client, tenant, "/v1/orders", {**_user_and_product(client, tenant), **fields})


def _without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "request_id"}


def test_orders_create_with_own_user_and_product(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    refs = _user_and_product(serving_client, tenant_a)
    response = _post(serving_client, tenant_a, "/v1/orders", {**refs, "quantity": 2})
    assert response.status_code == 201, response.json
    order = response.json
    assert (order["user_id"], order["product_id"]) == (refs["user_id"], refs["product_id"])
    assert (order["quantity"], order["status"]) == (2, "pending")
    fetched = serving_client.get(f"/v1/orders/{order['id']}", headers=auth_headers(tenant_a))
    assert fetched.json == order


@pytest.mark.parametrize("field", ["user_id", "product_id"])
def test_orders_reference_to_another_tenants_row_is_refused_like_a_missing_one(
    serving_client: FlaskClient,
    tenant_a: ProvisionedTenant,
    tenant_b: ProvisionedTenant,
    field: str,
) -> None:
    mine = _user_and_product(serving_client, tenant_a)
    theirs = _user_and_product(serving_client, tenant_b)
    foreign = _post(serving_client, tenant_a, "/v1/orders", {**mine, field: theirs[field]})
    missing = _post(serving_client, tenant_a, "/v1/orders", {**mine, field: str(uuid.uuid4())})
    assert foreign.status_code == missing.status_code == 422
    assert foreign.mimetype == "application/problem+json"
    assert foreign.json["errors"] == {field: ["refers to a record that does not exist"]}
    assert _without_request_id(foreign.json) == _without_request_id(missing.json)
    listed = serving_client.get("/v1/orders", headers=auth_headers(tenant_a)).json
    assert listed["total"] == 0


def test_orders_another_tenant_never_lists_them(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant, tenant_b: ProvisionedTenant
) -> None:
    mine = _order(serving_client, tenant_a)
    theirs = _order(serving_client, tenant_b)
    for tenant, order in ((tenant_a, mine), (tenant_b, theirs)):
        body = serving_client.get("/v1/orders", headers=auth_headers(tenant)).json
        assert [record["id"] for record in body["records"]] == [order["id"]]
        # Filtering by the other tenant's user finds nothing either.
        other = theirs if order is mine else mine
        query = {"user_id": other["user_id"]}
        filtered = serving_client.get(
            "/v1/orders", query_string=query, headers=auth_headers(tenant)
        )
        assert filtered.json["total"] == 0


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_orders_another_tenants_order_is_not_found_like_a_random_id(
    serving_client: FlaskClient,
    tenant_a: ProvisionedTenant,
    tenant_b: ProvisionedTenant,
    method: str,
) -> None:
    theirs = _order(serving_client, tenant_b)
    kwargs: dict[str, Any] = {"headers": auth_headers(tenant_a)}
    if method == "patch":
        kwargs["json"] = {"status": "cancelled"}
    foreign = getattr(serving_client, method)(f"/v1/orders/{theirs['id']}", **kwargs)
    random = getattr(serving_client, method)(f"/v1/orders/{uuid.uuid4()}", **kwargs)
    assert foreign.status_code == random.status_code == 404
    assert _without_request_id(foreign.json) == _without_request_id(random.json)
    assert foreign.json["detail"] == "no such order"
    after = serving_client.get(f"/v1/orders/{theirs['id']}", headers=auth_headers(tenant_b))
    assert after.json == theirs


def test_orders_patch_changes_quantity_and_status_only(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    order = _order(client, tenant_a)
    path, headers = f"/v1/orders/{order['id']}", auth_headers(tenant_a)
    patched = client.patch(path, json={"quantity": 5, "status": "paid"}, headers=headers)
    assert (patched.json["quantity"], patched.json["status"]) == (5, "paid")
    moved = client.patch(path, json={"user_id": str(uuid.uuid4())}, headers=headers)
    assert moved.status_code == 422
    assert moved.json["errors"] == {"user_id": ["Unknown field."]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"quantity": 0}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"status": "lost"}, "status"),
        ({"user_id": "not-a-uuid"}, "user_id"),
    ],
)
def test_orders_bad_values_are_422(
    client: FlaskClient, tenant_a: ProvisionedTenant, body: dict[str, Any], field: str
) -> None:
    refs = _user_and_product(client, tenant_a)
    response = _post(client, tenant_a, "/v1/orders", {**refs, **body})
    assert response.status_code == 422
    assert list(response.json["errors"]) == [field]


def test_orders_list_filters_sorts_and_pages(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    refs = _user_and_product(client, tenant_a)
    for quantity, status in ((3, "paid"), (1, "pending"), (2, "paid")):
        _created(client, tenant_a, "/v1/orders", {**refs, "quantity": quantity, "status": status})
    query = {"status": "paid", "sort_column": "quantity", "sort_direction": "desc", "page_size": 1}
    body = client.get("/v1/orders", query_string=query, headers=auth_headers(tenant_a)).json
    assert (body["total"], body["total_pages"]) == (2, 2)
    assert [record["quantity"] for record in body["records"]] == [3]


def test_orders_search_is_422_for_nothing_is_searchable(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    response = client.get("/v1/orders?search=x", headers=auth_headers(tenant_a))
    assert response.status_code == 422
    assert response.json["errors"] == {"search": ["this resource has no searchable columns"]}


def test_orders_go_with_their_user_and_keep_their_product(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    order, headers = _order(serving_client, tenant_a), auth_headers(tenant_a)
    kept = serving_client.delete(f"/v1/products/{order['product_id']}", headers=headers)
    assert kept.status_code == 409
    assert kept.json["code"] == "referenced"
    assert (
        serving_client.delete(f"/v1/users/{order['user_id']}", headers=headers).status_code == 204
    )
    assert serving_client.get(f"/v1/orders/{order['id']}", headers=headers).status_code == 404
    gone = serving_client.delete(f"/v1/products/{order['product_id']}", headers=headers)
    assert gone.status_code == 204
