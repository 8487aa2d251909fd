"""``GET /v1/admin/tenants/<id>/stats`` and ``flask tenants stats``, in process, every way.

Across gunicorn workers, against pg_stat_activity while connections are held open:
tests/e2e/test_observability.py.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app.dev.cluster import LocalCluster
from app.models import Tenant
from app.tenancy import Tenancy
from app.tenancy.control.provisioning import ProvisionedTenant
from config import Settings
from tests.support import auth_headers, backends_by_worker, invoke

BASE = "/v1/admin/tenants"


@pytest.fixture
def admin(settings: Settings) -> dict[str, str]:
    assert settings.admin_token is not None
    return {"Authorization": f"Bearer {settings.admin_token}"}


def _stats(client: FlaskClient, admin: dict[str, str], tenant_id: uuid.UUID) -> dict[str, Any]:
    response = client.get(f"{BASE}/{tenant_id}/stats", headers=admin)
    assert response.status_code == 200, response.json
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def test_tenant_stats_counts_its_requests_answers_and_way(
    serving_app: Flask,
    serving_client: FlaskClient,
    make_tenant: Callable[[], ProvisionedTenant],
    admin: dict[str, str],
) -> None:
    tenant, other = make_tenant(), make_tenant()
    for _ in range(3):
        assert serving_client.get("/v1/users", headers=auth_headers(tenant)).status_code == 200
    missing = serving_client.get(f"/v1/users/{uuid.uuid4()}", headers=auth_headers(tenant))
    assert missing.status_code == 404
    assert serving_client.get("/v1/users", headers=auth_headers(other)).status_code == 200

    body = _stats(serving_client, admin, tenant.id)

    [worker] = body["workers"]
    recent = worker["recent"]
    assert worker["pid"] == os.getpid()
    assert (recent["requests"], recent["client_errors"], recent["server_errors"]) == (4, 1, 0)
    assert recent["dedicated"] + recent["shared"] == 4
    assert worker["in_flight"] == 0
    assert worker["connections"]["shared_in_use"] == 0
    assert worker["last_request_at"] is not None
    assert body["totals"]["recent"]["requests"] == 4
    assert body["tenant"] == {
        "id": str(tenant.id),
        "name": tenant.name,
        "status": "active",
        "cluster": "default",
    }
    assert body["serving"] == serving_app.config["SETTINGS"].serving
    assert tenant.api_key not in json.dumps(body)


def test_tenant_stats_dedicated_connections_match_pg_stat_activity(
    client: FlaskClient,
    tenant_a: ProvisionedTenant,
    admin: dict[str, str],
    pg_cluster: LocalCluster,
) -> None:
    assert client.get("/v1/users", headers=auth_headers(tenant_a)).status_code == 200

    body = _stats(client, admin, tenant_a.id)

    [worker] = body["workers"]
    assert (worker["way"], worker["engine"]) == ("dedicated", True)
    assert worker["recent"]["dedicated"] == 1
    assert worker["last_login_at"] is not None
    seen = {
        pid: total
        for pid, (total, _) in backends_by_worker(
            pg_cluster.superuser_url("tenantpool"), tenant_a.id
        ).items()
    }
    assert seen == {os.getpid(): worker["connections"]["dedicated_open"]}
    assert body["database"]["by_worker"] == [
        {"pid": pid, "connections": count} for pid, count in seen.items()
    ]


def test_tenant_stats_shared_way_holds_no_engine(
    shared_app: Flask, tenant_a: ProvisionedTenant, admin: dict[str, str]
) -> None:
    client = shared_app.test_client()
    assert client.get("/v1/products", headers=auth_headers(tenant_a)).status_code == 200

    [worker] = _stats(client, admin, tenant_a.id)["workers"]

    assert (worker["way"], worker["engine"]) == ("shared", False)
    assert worker["connections"]["dedicated_open"] == 0
    assert (worker["recent"]["shared"], worker["last_login_at"]) == (1, None)


def test_tenant_stats_of_a_tenant_on_a_cluster_unknown_here_say_so(
    client: FlaskClient, tenancy: Tenancy, tenant_a: ProvisionedTenant, admin: dict[str, str]
) -> None:
    with tenancy.control_engine.begin() as connection:
        connection.execute(
            sa.update(Tenant).where(Tenant.id == tenant_a.id).values(cluster="elsewhere")
        )

    body = _stats(client, admin, tenant_a.id)

    assert body["database"]["connections"] is None
    assert "elsewhere" in body["database"]["note"]
    assert len(body["workers"]) == 1


def test_tenant_stats_of_an_unknown_tenant_is_404(
    client: FlaskClient, admin: dict[str, str]
) -> None:
    assert client.get(f"{BASE}/{uuid.uuid4()}/stats", headers=admin).status_code == 404


def test_tenant_stats_need_the_admin_token(
    client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    response = client.get(f"{BASE}/{tenant_a.id}/stats", headers=auth_headers(tenant_a))

    assert response.status_code == 401


def test_tenant_stats_are_in_the_openapi_document(client: FlaskClient) -> None:
    document: dict[str, Any] = client.get("/openapi.json").json  # type: ignore[assignment]

    operation = document["paths"][BASE + "/{tenant_id}/stats"]["get"]

    assert operation["security"] == [{"adminToken": []}]
    assert "workers" in document["components"]["schemas"]["TenantStats"]["properties"]


def test_tenants_stats_command_prints_the_database_view(
    app: Flask, client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    assert client.get("/v1/users", headers=auth_headers(tenant_a)).status_code == 200

    table = invoke(app, "tenants", "stats", tenant_a.name)
    report = json.loads(invoke(app, "tenants", "stats", str(tenant_a.id), "--as-json").output)

    assert table.exit_code == 0, table.output
    assert f"tenant {tenant_a.id} ({tenant_a.name}): active" in table.output
    assert f"database: {report['database']['connections']} connection(s)" in table.output
    assert report["database"]["connections"] >= 1
    assert report["workers"] == []  # a command serves nothing; workers answer through sockets
    assert "--workers-dir" in table.output  # said on stderr, which the runner mixes in
