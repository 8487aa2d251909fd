"""Bad requests get the right problem+json, never a 500."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from app.tenancy.control.provisioning import ProvisionedTenant
from tests.support import auth_headers


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'{"first_name": NaN, "last_name": "x"}', "application/json", 400),
        (b'{"price": Infinity}', "application/json", 400),
        (b"[" * 10_000 + b"]" * 10_000, "application/json", 400),
        (b'{"stock": ' + b"9" * 5000 + b"}", "application/json", 400),
        (b'{"first_name": "a"}', "text/plain", 415),
        (b"first_name=a", "application/x-www-form-urlencoded", 415),
        (b'{"first_name": "\\ud800", "last_name": "x"}', "application/json", 422),
        (b'{"first_name": "x", "last_name": "' + b"y" * 2_000_000 + b'"}', "application/json", 413),
    ],
    ids=[
        "malformed",
        "not-object",
        "nan",
        "infinity",
        "deep",
        "huge-int",
        "text",
        "form",
        "surrogate",
        "too-large",
    ],
)
def test_errors_bad_body_gets_4xx_problem(
    client: FlaskClient, tenant_a: ProvisionedTenant, body: bytes, content_type: str, status: int
) -> None:
    headers = {**auth_headers(tenant_a), "Content-Type": content_type}
    response = client.post("/v1/users", data=body, headers=headers)
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    problem = response.json
    assert problem is not None
    assert problem["status"] == status
    assert problem["request_id"] == response.headers["X-Request-ID"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_errors_unknown_route_is_problem_404(client: FlaskClient) -> None:
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_errors_wrong_method_is_405_with_allow(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    response = client.put("/v1/users", headers=auth_headers(tenant_a))
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]


def test_errors_request_id_is_echoed_when_safe(client: FlaskClient) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123-def"}).headers["X-Request-ID"]
        == "abc-123-def"
    )
    generated = client.get("/healthz", headers={"X-Request-ID": "<script>"}).headers["X-Request-ID"]
    assert generated != "<script>"
    assert len(generated) == 32


def test_errors_negative_price_is_422(client: FlaskClient, tenant_a: ProvisionedTenant) -> None:
    response = client.post(
        "/v1/products", json={"name": "x", "price": -1}, headers=auth_headers(tenant_a)
    )
    assert response.status_code == 422
    assert "price" in response.json["errors"]  # type: ignore[index]


def test_errors_huge_price_is_422_not_a_database_overflow(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    response = client.post(
        "/v1/products", json={"name": "x", "price": "1e30"}, headers=auth_headers(tenant_a)
    )
    assert response.status_code == 422
