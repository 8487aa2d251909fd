"""Health endpoints and the OpenAPI document."""

from __future__ import annotations

from flask.testing import FlaskClient


def test_health_healthz_is_ok(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}


def test_health_readyz_checks_the_control_plane(client: FlaskClient) -> None:
    assert client.get("/readyz").json == {"status": "ready"}


def test_health_template_health_check_is_200(client: FlaskClient) -> None:
    assert client.get("/health_check").status_code == 200


def test_health_openapi_lists_every_resource_operation(client: FlaskClient) -> None:
    document = client.get("/openapi.json").json
    assert document is not None
    assert document["openapi"].startswith("3.")
    for path in ("/v1/users", "/v1/internal/users", "/v1/products"):
        assert set(document["paths"][path]) == {"get", "post"}
        assert set(document["paths"][path + "/{record_id}"]) == {"get", "patch", "delete"}
    assert "User" in document["components"]["schemas"]
    query = [p["name"] for p in document["paths"]["/v1/users"]["get"]["parameters"]]
    assert {"page", "page_size", "sort_column", "search", "confirmed"} <= set(query)
