"""Overload answers 503 problem+json, never 500: statement timeouts and the connection budget.

The app here has a connection budget of one and a few test-only routes that run what no
real endpoint does (pg_sleep, hold a connection), mounted like any tenant blueprint.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Blueprint, Flask, request

from app import create_app
from app.hooks import require_tenant, tenant_session
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.provisioning import ProvisionedTenant, create_tenant
from config import Settings
from tests.support import auth_headers

GUARD = 10.0
release = threading.Event()
holding = threading.Event()


def _probe_blueprint() -> Blueprint:
    bp = Blueprint("probe", __name__)
    require_tenant(bp)

    @bp.get("/pid")
    def pid() -> dict[str, int]:
        return {"pid": tenant_session().execute(sa.text("SELECT pg_backend_pid()")).scalar_one()}

    @bp.get("/sleep")
    def sleep() -> dict[str, bool]:
        seconds = float(request.args["seconds"])
        tenant_session().execute(sa.text("SELECT pg_sleep(:s)"), {"s": seconds})
        return {"slept": True}

    @bp.get("/hold")
    def hold() -> dict[str, bool]:
        holding.set()
        assert release.wait(GUARD)
        return {"held": True}

    return bp


@pytest.fixture
def small_app(settings: Settings, migrated: None) -> Iterator[Flask]:
    application = create_app(dataclasses.replace(settings, connection_budget=1, pool_timeout=0.3))
    application.register_blueprint(_probe_blueprint(), url_prefix="/probe")
    yield application
    release.set()
    tenancy_of(application).close()


@pytest.fixture
def small_tenancy(small_app: Flask) -> Tenancy:
    return tenancy_of(small_app)


def _tenant(tenancy: Tenancy, **limits: int) -> ProvisionedTenant:
    return create_tenant(
        tenancy.clusters,
        tenancy.keyring,
        f"capacity-{uuid.uuid4().hex[:12]}",
        dataclasses.replace(tenancy.limits, **limits),
    )


def test_overload_statement_timeout_is_503_and_connection_stays_usable(
    small_app: Flask, small_tenancy: Tenancy
) -> None:
    tenant = _tenant(small_tenancy, statement_timeout_ms=100)
    client = small_app.test_client()
    headers = auth_headers(tenant)
    before = client.get("/probe/pid", headers=headers).json

    response = client.get("/probe/sleep", query_string={"seconds": 2}, headers=headers)

    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.json is not None
    assert response.json["code"] == "statement_timeout"
    assert response.headers["Retry-After"] == "1"
    # The same backend serves the next request: the connection was not thrown away.
    assert client.get("/probe/pid", headers=headers).json == before


def test_overload_busy_budget_is_503_capacity_with_retry_after(
    small_app: Flask, small_tenancy: Tenancy
) -> None:
    holder, waiter = _tenant(small_tenancy), _tenant(small_tenancy)
    release.clear()
    holding.clear()
    results: list[int] = []
    thread = threading.Thread(
        target=lambda: results.append(
            small_app.test_client().get("/probe/hold", headers=auth_headers(holder)).status_code
        ),
        daemon=True,
    )
    thread.start()
    assert holding.wait(GUARD)

    try:
        response = small_app.test_client().get("/v1/users", headers=auth_headers(waiter))
    finally:
        release.set()
        thread.join(GUARD)

    assert response.status_code == 503
    assert response.json is not None
    assert response.json["code"] == "capacity"
    assert response.headers["Retry-After"] == "1"
    assert results == [200]
    # Once the holder is done, its idle connection is closed to make room.
    assert small_app.test_client().get("/v1/users", headers=auth_headers(waiter)).status_code == 200
    assert small_tenancy.budget.in_use == 1


def test_overload_metrics_count_requests_and_rejections(
    small_app: Flask, small_tenancy: Tenancy
) -> None:
    client = small_app.test_client()
    client.get("/healthz")

    body = client.get("/metrics").get_data(as_text=True)

    assert 'tenantpool_http_requests_total{method="GET",route="/healthz",status="200"}' in body
    assert "tenantpool_capacity_rejections_total" in body
    assert "tenantpool_connection_budget_in_use" in body
    assert "tenantpool_tenant_engines_created_total" in body
