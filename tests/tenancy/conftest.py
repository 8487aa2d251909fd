"""An app whose tenants may live on two PostgreSQL servers: ``default`` and ``c2``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.devcluster import LocalCluster
from app.hooks import tenancy_of
from app.tenancy import Tenancy
from app.tenancy.provisioning import ProvisionedTenant, create_tenant
from config import load_settings


@pytest.fixture(scope="session")
def placed_app(two_clusters_env: dict[str, str]) -> Iterator[Flask]:
    application = create_app(load_settings(two_clusters_env))
    yield application
    tenancy_of(application).close()


@pytest.fixture(scope="session")
def placed(placed_app: Flask) -> Tenancy:
    """The tenancy of an app configured with ``APP_CLUSTERS={"c2": ...}``."""
    return tenancy_of(placed_app)


@pytest.fixture
def placed_client(placed_app: Flask) -> FlaskClient:
    return placed_app.test_client()


@pytest.fixture
def make_placed(placed: Tenancy) -> Callable[[str], ProvisionedTenant]:
    """Create a fresh tenant on the named cluster."""

    def make(cluster: str) -> ProvisionedTenant:
        name = f"placed-{uuid.uuid4().hex[:12]}"
        return create_tenant(placed.clusters, placed.keyring, name, placed.limits, cluster=cluster)

    return make


@pytest.fixture(scope="session")
def inspect(pg_cluster: LocalCluster, second_cluster: LocalCluster) -> Inspector:
    """Superuser queries on each server, only to look (roles, rows), never as the app."""
    return Inspector(
        {
            "default": pg_cluster.superuser_url("tenantpool"),
            "c2": second_cluster.superuser_url("tenantpool"),
        }
    )


class Inspector:
    def __init__(self, urls: dict[str, str]) -> None:
        self._urls = urls

    def rows(self, cluster: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
        connection = psycopg2.connect(self._urls[cluster])
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def value(self, cluster: str, query: str, *params: Any) -> Any:
        return self.rows(cluster, query, *params)[0][0]

    def has_role(self, cluster: str, tenant_id: uuid.UUID) -> bool:
        role = f"t_{tenant_id.hex}"
        return bool(self.value(cluster, "SELECT count(*) FROM pg_roles WHERE rolname = %s", role))

    def placed(self, cluster: str, tenant_id: uuid.UUID) -> bool:
        query = "SELECT count(*) FROM tenant_placements WHERE tenant_id = %s"
        return bool(self.value(cluster, query, str(tenant_id)))

    def tenant_rows(self, cluster: str, table: str, tenant_id: uuid.UUID) -> int:
        # table is one of our fixed names, never input.
        query = f"SELECT count(*) FROM {table} WHERE tenant_id = %s"
        return int(self.value(cluster, query, str(tenant_id)))


MakePlaced = Callable[[str], ProvisionedTenant]
