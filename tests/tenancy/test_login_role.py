"""Every new tenant connection is its tenant's role, checked once on connect, or it is refused.

Two real misconfigurations: a cluster DSN whose query string names the owner (libpq lets
``?user=&password=`` win over the URL's user, which is all a tenant engine replaces), and
a tenant role the server switches to another role at login (``ALTER ROLE ... SET role``).
Either way the request gets 503 ``wrong_role`` and the log says why; no statement runs as
the wrong role. The first case runs in every way of serving (dedicated, shared, mix).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import psycopg2
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.dev.cluster import LocalCluster
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.control.roles import role_name
from config import Settings
from tests.support import auth_headers


@pytest.fixture(params=["dedicated", "shared", "mix"])
def owner_in_query_app(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Flask]:
    """An app whose default cluster DSN carries the owner in its query string.

    Built past the settings check (which refuses such a DSN at start-up), as a deployment
    that bypassed it would be.
    """
    owner = sa.make_url(settings.database_url)
    query = {"user": owner.username or "", "password": owner.password or ""}
    poisoned = owner.update_query_dict(query).render_as_string(hide_password=False)
    application = create_app(
        dataclasses.replace(settings, serving=request.param, clusters={"default": poisoned})
    )
    yield application
    tenancy_of(application).close()


def test_login_role_owner_in_dsn_query_is_refused_on_connect(
    owner_in_query_app: Flask, tenant_a: ProvisionedTenant, caplog: pytest.LogCaptureFixture
) -> None:
    client = owner_in_query_app.test_client()
    with caplog.at_level(logging.ERROR):
        response = client.get("/v1/users", headers=auth_headers(tenant_a))

    assert response.status_code == 503
    assert response.json is not None
    assert response.json["code"] == "wrong_role"
    assert "Retry-After" in response.headers
    refusals = [r.getMessage() for r in caplog.records if "refused a new connection" in r.message]
    assert refusals
    owner = sa.make_url(tenancy_of(owner_in_query_app).control_engine.url).username
    assert f"session_user={owner}" in refusals[0]


@pytest.fixture
def switched_role(pg_cluster: LocalCluster, tenant_a: ProvisionedTenant) -> Iterator[str]:
    """Tenant A's role becomes ``tenant_base`` at every login (a server-side misconfiguration)."""
    role = role_name(tenant_a.id)
    superuser = psycopg2.connect(pg_cluster.superuser_url("tenantpool"))
    superuser.autocommit = True
    try:
        with superuser.cursor() as cursor:
            cursor.execute(f"ALTER ROLE \"{role}\" SET role = 'tenant_base'")
        yield role
        with superuser.cursor() as cursor:
            cursor.execute(f'ALTER ROLE "{role}" RESET role')
    finally:
        superuser.close()


def test_login_role_switched_at_login_is_refused(
    app: Flask, tenancy: Tenancy, tenant_a: ProvisionedTenant, switched_role: str
) -> None:
    tenancy.forget(tenant_a.id, "test")  # new connections pick the role setting up

    response = app.test_client().get("/v1/users", headers=auth_headers(tenant_a))

    assert response.status_code == 503
    assert response.json is not None
    assert response.json["code"] == "wrong_role"
    assert tenant_a.id not in tenancy.registry  # no engine is kept for it


def test_login_role_right_role_is_served(
    serving_client: FlaskClient, tenant_a: ProvisionedTenant
) -> None:
    assert serving_client.get("/v1/users", headers=auth_headers(tenant_a)).status_code == 200
