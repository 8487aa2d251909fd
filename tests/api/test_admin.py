"""``/v1/admin/tenants``: every lifecycle action, and attempts to get in without the token."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app import create_app
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.provisioning import ProvisionedTenant
from config import Settings
from tests.support import auth_headers, stored_password

BASE = "/v1/admin/tenants"
TENANT_FIELDS = {
    "id",
    "name",
    "status",
    "cluster",
    "db_role",
    "encryption_key_id",
    "created_at",
    "updated_at",
}


@pytest.fixture
def admin(settings: Settings) -> dict[str, str]:
    assert settings.admin_token is not None
    return {"Authorization": f"Bearer {settings.admin_token}"}


def _body(response: TestResponse) -> dict[str, Any]:
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def _create(client: FlaskClient, admin: dict[str, str]) -> dict[str, Any]:
    response = client.post(BASE, json={"name": f"adm-{uuid.uuid4().hex[:10]}"}, headers=admin)
    assert response.status_code == 201, response.json
    return _body(response)


def _as_tenant(body: dict[str, Any]) -> dict[str, str]:
    return {"X-Tenant-ID": body["id"], "Authorization": f"Bearer {body['api_key']}"}


def _serving_tenant(client: FlaskClient, admin: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A new tenant's admin path and request headers, once it has been served."""
    body = _create(client, admin)
    headers = _as_tenant(body)
    assert client.get("/v1/users", headers=headers).status_code == 200
    return f"{BASE}/{body['id']}", headers


def _problem(response: TestResponse) -> dict[str, Any]:
    assert response.headers["Content-Type"] == "application/problem+json"
    return {key: value for key, value in _body(response).items() if key != "request_id"}


# --- getting in -------------------------------------------------------------------------


def test_admin_missing_and_wrong_token_get_the_same_401(client: FlaskClient) -> None:
    missing = client.get(BASE)
    wrong = client.get(BASE, headers={"Authorization": "Bearer " + "x" * 43})
    assert missing.status_code == wrong.status_code == 401
    assert _problem(missing) == _problem(wrong)
    assert missing.headers["WWW-Authenticate"] == wrong.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "authorization",
    [
        [],
        ["Bearer"],
        ["Bearer "],
        ["Basic YWRtaW46YWRtaW4="],
        ["{token}"],
        ["bearer {token}"],
        ["Bearer {token}", "Bearer {token}"],
    ],
    ids=["none", "no-token", "empty", "basic", "no-scheme", "lower-case", "twice"],
)
def test_admin_malformed_authorization_is_401(
    client: FlaskClient, settings: Settings, authorization: list[str]
) -> None:
    headers = [
        ("Authorization", value.format(token=settings.admin_token)) for value in authorization
    ]
    assert client.get(BASE, headers=headers).status_code == 401


def test_admin_tenant_api_key_is_not_an_admin_token(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    response = client.get(BASE, headers=auth_headers(tenant_a))
    assert response.status_code == 401
    assert _problem(response) == _problem(client.get(BASE))


def test_admin_token_is_not_a_tenant_api_key(
    client: FlaskClient, settings: Settings, tenant_a: ProvisionedTenant
) -> None:
    headers = {"X-Tenant-ID": str(tenant_a.id), "Authorization": f"Bearer {settings.admin_token}"}
    assert client.get("/v1/users", headers=headers).status_code == 401


def _app(settings: Settings, **changes: Any) -> Iterator[Flask]:
    app = create_app(dataclasses.replace(settings, **changes))
    yield app
    tenancy_of(app).close()


@pytest.fixture
def trusting_app(settings: Settings, migrated: None) -> Iterator[Flask]:
    """Admin API for 10.0.0.0/8 only; no proxy trusted."""
    yield from _app(settings, trusted_cidrs=(ipaddress.ip_network("10.0.0.0/8"),))


@pytest.fixture
def proxied_app(settings: Settings, migrated: None) -> Iterator[Flask]:
    """Admin API for 10.0.0.0/8 only, behind one trusted proxy."""
    yield from _app(
        settings, trusted_cidrs=(ipaddress.ip_network("10.0.0.0/8"),), trusted_proxies=1
    )


@pytest.mark.parametrize(
    ("address", "status"),
    [("10.1.2.3", 200), ("::ffff:10.1.2.3", 200), ("203.0.113.7", 403), ("2001:db8::1", 403)],
)
def test_admin_trusted_cidrs_decide_by_address(
    trusting_app: Flask, admin: dict[str, str], address: str, status: int
) -> None:
    client = trusting_app.test_client()
    response = client.get(BASE, headers=admin, environ_base={"REMOTE_ADDR": address})
    assert response.status_code == status


def test_admin_untrusted_address_is_403_before_the_token_is_read(trusting_app: Flask) -> None:
    client = trusting_app.test_client()
    response = client.get(BASE, environ_base={"REMOTE_ADDR": "203.0.113.7"})
    assert response.status_code == 403
    assert _problem(response)["code"] == "forbidden"


def test_admin_forwarded_address_is_ignored_without_trusted_proxies(
    trusting_app: Flask, admin: dict[str, str]
) -> None:
    client = trusting_app.test_client()
    response = client.get(
        BASE,
        headers={**admin, "X-Forwarded-For": "10.1.2.3"},
        environ_base={"REMOTE_ADDR": "203.0.113.7"},
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("forwarded", "status"),
    [("10.1.2.3", 200), ("203.0.113.7", 403), ("10.1.2.3, 203.0.113.7", 403)],
)
def test_admin_trusted_proxy_forwards_the_client_address(
    proxied_app: Flask, admin: dict[str, str], forwarded: str, status: int
) -> None:
    client = proxied_app.test_client()
    response = client.get(
        BASE,
        headers={**admin, "X-Forwarded-For": forwarded},
        environ_base={"REMOTE_ADDR": "192.0.2.1"},
    )
    assert response.status_code == status


def test_admin_without_a_configured_token_nobody_gets_in(
    settings: Settings, migrated: None
) -> None:
    for app in _app(settings, admin_token=None):
        client = app.test_client()
        assert client.get(BASE, headers={"Authorization": "Bearer "}).status_code == 401
        assert client.get(BASE, headers={"Authorization": "Bearer None"}).status_code == 401


# --- lifecycle ----------------------------------------------------------------------------


def test_admin_create_returns_the_key_once_and_it_works(
    client: FlaskClient, admin: dict[str, str]
) -> None:
    response = client.post(BASE, json={"name": f"adm-{uuid.uuid4().hex[:10]}"}, headers=admin)
    assert response.status_code == 201
    body = _body(response)
    assert set(body) == TENANT_FIELDS | {"api_key"}
    assert body["status"] == "active"
    assert response.headers["Location"].endswith(f"{BASE}/{body['id']}")
    assert response.headers["Cache-Control"] == "no-store"
    assert client.get("/v1/users", headers=_as_tenant(body)).status_code == 200
    fetched = _body(client.get(f"{BASE}/{body['id']}", headers=admin))
    assert set(fetched) == TENANT_FIELDS


@pytest.mark.parametrize(
    "payload",
    [{}, {"name": ""}, {"name": "   "}, {"name": "x" * 101}, {"name": "a\nb"}, {"name": 7}],
    ids=["missing", "empty", "blank", "long", "control", "number"],
)
def test_admin_create_validates_the_name(
    client: FlaskClient, admin: dict[str, str], payload: dict[str, Any]
) -> None:
    response = client.post(BASE, json=payload, headers=admin)
    assert response.status_code == 422
    assert "name" in _body(response)["errors"]


def test_admin_create_refuses_unknown_fields(client: FlaskClient, admin: dict[str, str]) -> None:
    response = client.post(BASE, json={"name": "fine", "password": "x"}, headers=admin)
    assert response.status_code == 422


def test_admin_create_refuses_a_taken_name(
    client: FlaskClient, admin: dict[str, str], tenant_a: ProvisionedTenant
) -> None:
    response = client.post(BASE, json={"name": tenant_a.name}, headers=admin)
    assert response.status_code == 409
    assert _body(response)["code"] == "conflict"


def test_admin_create_needs_json(client: FlaskClient, admin: dict[str, str]) -> None:
    response = client.post(BASE, data="name=x", headers=admin, content_type="text/plain")
    assert response.status_code == 415


def test_admin_list_pages_through_tenants(client: FlaskClient, admin: dict[str, str]) -> None:
    made = {_create(client, admin)["id"] for _ in range(3)}
    seen: list[str] = []
    page = 1
    while True:
        body = _body(client.get(BASE, query_string={"page": page, "page_size": 2}, headers=admin))
        if not body["records"]:
            break
        assert all(set(record) == TENANT_FIELDS for record in body["records"])
        seen += [record["id"] for record in body["records"]]
        page += 1
    assert body["total_pages"] == -(-body["total"] // 2)
    assert len(seen) == len(set(seen))
    assert made <= set(seen)


@pytest.mark.parametrize(
    "query",
    [{"page": 0}, {"page_size": 101}, {"page": "x"}, {"status": "gone"}, {"sort": "name"}],
)
def test_admin_list_rejects_bad_queries(
    client: FlaskClient, admin: dict[str, str], query: dict[str, Any]
) -> None:
    assert client.get(BASE, query_string=query, headers=admin).status_code == 422


def test_admin_get_unknown_tenant_is_404(client: FlaskClient, admin: dict[str, str]) -> None:
    assert client.get(f"{BASE}/{uuid.uuid4()}", headers=admin).status_code == 404


@pytest.mark.parametrize(
    ("method", "action"),
    [
        ("post", "rotate-credentials"),
        ("post", "rotate-api-key"),
        ("post", "suspend"),
        ("post", "resume"),
        ("delete", ""),
    ],
)
def test_admin_actions_on_unknown_tenant_are_404(
    client: FlaskClient, admin: dict[str, str], method: str, action: str
) -> None:
    path = f"{BASE}/{uuid.uuid4()}" + (f"/{action}" if action else "")
    assert client.open(path, method=method, headers=admin).status_code == 404


def test_admin_rotate_credentials_keeps_the_tenant_working(
    client: FlaskClient, admin: dict[str, str], tenancy: Tenancy
) -> None:
    path, tenant = _serving_tenant(client, admin)
    tenant_id = uuid.UUID(tenant["X-Tenant-ID"])
    before = stored_password(tenancy.control_engine, tenancy.keyring, tenant_id)
    response = client.post(f"{path}/rotate-credentials", headers=admin)
    assert response.status_code == 200
    assert set(_body(response)) == TENANT_FIELDS
    assert stored_password(tenancy.control_engine, tenancy.keyring, tenant_id) != before
    assert client.get("/v1/users", headers=tenant).status_code == 200


def test_admin_rotate_api_key_retires_the_old_key(
    client: FlaskClient, admin: dict[str, str]
) -> None:
    path, old = _serving_tenant(client, admin)
    response = client.post(f"{path}/rotate-api-key", headers=admin)
    assert response.status_code == 200
    new = _as_tenant(_body(response))
    assert client.get("/v1/users", headers=old).status_code == 401
    assert client.get("/v1/users", headers=new).status_code == 200


def test_admin_suspend_gives_403_and_resume_200(client: FlaskClient, admin: dict[str, str]) -> None:
    path, tenant = _serving_tenant(client, admin)
    assert _body(client.post(f"{path}/suspend", headers=admin))["status"] == "suspended"
    assert client.get("/v1/users", headers=tenant).status_code == 403
    assert _body(client.post(f"{path}/resume", headers=admin))["status"] == "active"
    assert client.get("/v1/users", headers=tenant).status_code == 200


def test_admin_delete_then_the_tenant_gets_401_and_404(
    client: FlaskClient, admin: dict[str, str]
) -> None:
    path, tenant = _serving_tenant(client, admin)
    created = client.post("/v1/users", json={"first_name": "a", "last_name": "b"}, headers=tenant)
    assert created.status_code == 201
    assert client.delete(path, headers=admin).status_code == 204
    assert client.get("/v1/users", headers=tenant).status_code == 401
    assert client.get(path, headers=admin).status_code == 404


def test_admin_responses_hold_no_secret(
    client: FlaskClient, admin: dict[str, str], tenancy: Tenancy
) -> None:
    body = _create(client, admin)
    tenant_id = body["id"]
    password = stored_password(tenancy.control_engine, tenancy.keyring, uuid.UUID(tenant_id))
    texts = [
        client.get(f"{BASE}/{tenant_id}", headers=admin).get_data(as_text=True),
        client.get(BASE, query_string={"page_size": 100}, headers=admin).get_data(as_text=True),
        client.post(f"{BASE}/{tenant_id}/suspend", headers=admin).get_data(as_text=True),
        client.post(f"{BASE}/{tenant_id}/rotate-credentials", headers=admin).get_data(as_text=True),
    ]
    new_password = stored_password(tenancy.control_engine, tenancy.keyring, uuid.UUID(tenant_id))
    for text in texts:
        for secret in (password, new_password, body["api_key"], "v1:test1:"):
            assert secret not in text
        assert "hash" not in text
        assert "encrypted" not in text


def test_admin_actions_leave_audit_lines_naming_the_caller(
    client: FlaskClient, admin: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantpool.audit")
    body = _create(client, admin)
    client.post(f"{BASE}/{body['id']}/suspend", headers=admin)
    lines = [record.__dict__ for record in caplog.records if record.name == "tenantpool.audit"]
    assert [line["action"] for line in lines] == ["created", "suspended"]
    for line in lines:
        assert line["actor"].startswith("admin-api:127.0.0.1 request:")
        assert line["tenant_id"] == body["id"]
        assert body["api_key"] not in json.dumps(line, default=str)


def test_admin_paths_are_in_the_openapi_document(client: FlaskClient) -> None:
    document = _body(client.get("/openapi.json"))
    paths = document["paths"]
    assert {"get", "post"} <= set(paths[BASE])
    assert {"get", "delete"} <= set(paths[BASE + "/{tenant_id}"])
    for action in ("rotate-credentials", "rotate-api-key", "suspend", "resume"):
        operation = paths[f"{BASE}/{{tenant_id}}/{action}"]["post"]
        assert operation["security"] == [{"adminToken": []}]
        assert not any(p.get("name") == "X-Tenant-ID" for p in operation.get("parameters", []))
    assert "api_key" in document["components"]["schemas"]["TenantWithKey"]["properties"]
    assert "api_key" not in document["components"]["schemas"]["Tenant"]["properties"]
