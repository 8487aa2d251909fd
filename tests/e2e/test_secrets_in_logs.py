"""No secret reaches a log: a whole session through gunicorn, then both logs are searched.

The session runs on a dedicated cluster with ``log_statement=all``, so the PostgreSQL log holds
every statement the app sent (psycopg2 interpolates parameters client-side, so values are in
it too). Searched for: every tenant password (decrypted from ``tenants`` with the keyring), API
key, the admin token, the encryption key, the owner's password and the wrong keys tried.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from config import load_settings
from tests.conftest import ClusterFactory, upgrade_database
from tests.e2e.conftest import SeededTenant, seed, start_service, stop_service
from tests.support import tenant_passwords

pytestmark = pytest.mark.e2e


def test_secrets_in_logs_appear_nowhere(
    cluster_factory: ClusterFactory, app_env: dict[str, str], tmp_path: Path
) -> None:
    cluster = cluster_factory(extra_settings={"log_statement": "all"})
    owner_password = secrets.token_urlsafe(24)
    env = {
        **app_env,
        "APP_DATABASE_URL": cluster.bootstrap_owner("tenantpool", owner_password, "tenantpool"),
    }
    upgrade_database(env)
    tenants = seed(env, tmp_path / "tenants.json", count=3, prefix="logs")
    process, service = start_service(env, tmp_path / "gunicorn.log")
    try:
        wrong_keys = _session(service.url, tenants, env["APP_ADMIN_TOKEN"])
    finally:
        stop_service(process)

    settings = load_settings(env)
    passwords = tenant_passwords(env["APP_DATABASE_URL"], settings)
    assert len(passwords) == len(tenants)
    searched = {
        "admin token": env["APP_ADMIN_TOKEN"],
        "owner password": owner_password,
        **{f"encryption key {kid}": key.hex() for kid, key in settings.encryption_keys.items()},
        **{f"api key of {tenant.name}": tenant.api_key for tenant in tenants},
        **{f"wrong key {number}": key for number, key in enumerate(wrong_keys)},
        **{f"password of {role}": password for role, password in passwords.items()},
    }
    service_log = service.log_path.read_text()
    server_log = cluster.log_path.read_text()
    for name, secret in searched.items():
        assert secret.lower() not in service_log.lower(), f"{name} is in the service log"
        assert secret.lower() not in server_log.lower(), f"{name} is in the PostgreSQL log"

    # Every line is JSON, gunicorn's own included; and the session is in them.
    lines = [json.loads(line) for line in service_log.splitlines() if line.strip()]
    assert {line.get("tenant_id") for line in lines} >= {tenant.id for tenant in tenants}
    assert {line.get("status") for line in lines} >= {200, 201, 204, 400, 401, 404, 415, 422}
    # Tenant passwords reached PostgreSQL only as SCRAM verifiers (seed-tenants sends a
    # batch of CREATE ROLE statements in one message).
    for tenant in tenants:
        role = f"t_{uuid.UUID(tenant.id).hex}"
        assert re.search(
            rf"statement: (?:.*; )?CREATE ROLE \"{role}\" .*?PASSWORD 'SCRAM-SHA-256\$\d+:",
            server_log,
        ), f"no CREATE ROLE with a SCRAM verifier for {role} in the PostgreSQL log"


def _session(url: str, tenants: list[SeededTenant], admin_token: str) -> list[str]:
    """CRUD for every tenant, failed logins and bad requests; returns the wrong keys tried."""
    for tenant in tenants:
        for path, body, patch in (
            ("/v1/users", {"first_name": "Grace", "last_name": "Hopper"}, {"confirmed": True}),
            ("/v1/products", {"name": "Gizmo", "price": "1.50", "stock": 2}, {"stock": 3}),
        ):
            created = _call("post", url + path, 201, headers=tenant.headers, json=body)
            item = f"{url}{path}/{created['id']}"
            _call("get", item, 200, headers=tenant.headers)
            _call("patch", item, 200, headers=tenant.headers, json=patch)
            _call("get", url + path, 200, headers=tenant.headers, params={"search": "Gr"})
            _call("delete", item, 204, headers=tenant.headers)
            _call("get", item, 404, headers=tenant.headers)
    first, second = tenants[0], tenants[1]
    wrong_keys = [secrets.token_urlsafe(32), first.api_key[:-4] + "AAAA"]
    for key in wrong_keys:
        _call("get", url + "/v1/users", 401, headers={**first.headers, "Authorization": key})
        bearer = {**first.headers, "Authorization": f"Bearer {key}"}
        _call("get", url + "/v1/users", 401, headers=bearer)
    foreign = {**first.headers, "Authorization": f"Bearer {second.api_key}"}
    _call("get", url + "/v1/users", 401, headers=foreign)
    misused_admin = {**first.headers, "Authorization": f"Bearer {admin_token}"}
    _call("get", url + "/v1/users", 401, headers=misused_admin)
    # The admin API, where there is one, sees its token; where not, the 404 must not log it.
    requests.get(
        url + "/v1/admin/tenants", headers={"Authorization": f"Bearer {admin_token}"}, timeout=10
    )
    _call("get", url + "/v1/users", 400, headers={**first.headers, "X-Tenant-ID": first.api_key})
    as_json = {**first.headers, "Content-Type": "application/json"}
    _call("post", url + "/v1/users", 400, headers=as_json, data=b'{"first_name": ')
    _call("post", url + "/v1/users", 415, headers=first.headers, data=first.api_key)
    _call("post", url + "/v1/users", 422, headers=first.headers, json={"first_name": ""})
    return wrong_keys


def _call(method: str, url: str, status: int, **kwargs: Any) -> Any:
    response = requests.request(method, url, timeout=10, **kwargs)
    assert response.status_code == status, f"{method} {url}: {response.text}"
    return response.json() if response.content else None
