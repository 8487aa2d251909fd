"""The OpenAPI document is valid and says what the API does; found by schemathesis."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from app.api import declared_resources


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/openapi.json").json  # type: ignore[assignment]
    return body


def test_openapi_decimal_bounds_are_numbers(document: dict[str, Any]) -> None:
    price = document["components"]["schemas"]["ProductCreate"]["properties"]["price"]
    assert (price["type"], price["minimum"], price["maximum"]) == ("number", 0, 9999999999.99)


def test_openapi_price_is_returned_as_a_decimal_string(document: dict[str, Any]) -> None:
    price = document["components"]["schemas"]["Product"]["properties"]["price"]
    assert price["type"] == "string"


def test_openapi_search_columns_names_its_columns(document: dict[str, Any]) -> None:
    (parameter,) = [
        p
        for p in document["paths"]["/v1/products"]["get"]["parameters"]
        if p["name"] == "search_columns"
    ]
    assert parameter["schema"]["pattern"] == "^(name|description)(,(name|description))*$"


@pytest.mark.parametrize("status", ["413", "414", "431"])
def test_openapi_documents_refusals_of_oversized_requests(
    document: dict[str, Any], status: str
) -> None:
    assert status in document["paths"]["/v1/users"]["post"]["responses"]


def test_openapi_describes_every_declared_resource(document: dict[str, Any]) -> None:
    for resource in declared_resources():
        assert f"/v1/{resource.name}" in document["paths"]
        assert f"/v1/{resource.name}/{{record_id}}" in document["paths"]
        for suffix in ("", "Create", "Patch", "Page"):
            assert resource.title + suffix in document["components"]["schemas"]


def test_openapi_titles_are_declared_not_derived() -> None:
    titles = {resource.name: resource.title for resource in declared_resources()}
    assert titles.items() >= {("users", "User"), ("products", "Product")}


def test_openapi_tenant_operations_take_an_api_key_or_an_end_users_jwt(
    document: dict[str, Any],
) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["endUserJwt"]["bearerFormat"] == "JWT"
    assert schemes["apiKey"]["scheme"] == "bearer"
    for resource in declared_resources():
        operation = document["paths"][f"/v1/{resource.name}"]["get"]
        assert operation["security"] == [{"apiKey": []}, {"endUserJwt": []}]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/users", "post"),
        ("/v1/users/{record_id}", "patch"),
        ("/v1/orders/{record_id}", "delete"),
    ],
)
def test_openapi_writes_take_an_idempotency_key(
    document: dict[str, Any], path: str, method: str
) -> None:
    operation = document["paths"][path][method]
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert "Idempotency-Key" in names
    assert {"409", "422"} <= operation["responses"].keys()
    assert "idempotency_key_in_use" in operation["responses"]["409"]["description"]


def test_openapi_reads_take_no_idempotency_key(document: dict[str, Any]) -> None:
    names = {parameter["name"] for parameter in document["paths"]["/v1/users"]["get"]["parameters"]}
    assert "Idempotency-Key" not in names
