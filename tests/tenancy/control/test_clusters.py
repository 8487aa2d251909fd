"""Clusters by name: owner engines, identity, and tenant engines on the tenant's own cluster."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from app.dev.cluster import LocalCluster
from app.models import Tenant
from app.tenancy import Tenancy
from app.tenancy.control.clusters import Clusters
from app.tenancy.errors import UnknownCluster
from tests.support import Inspector, MakePlaced, auth_headers


def test_clusters_default_is_the_control_plane_engine(placed: Tenancy) -> None:
    assert placed.clusters.names == ["c2", "default"]
    assert placed.clusters.engine("default") is placed.control_engine
    assert placed.clusters.engine("c2") is not placed.control_engine


def test_clusters_default_without_credentials_only_routes_tenants(placed: Tenancy) -> None:
    """Compose's set-up: tenants reach default through PgBouncer, the owner goes direct."""
    route = sa.make_url("postgresql://127.0.0.1:6432/tenantpool")
    clusters = Clusters(placed.control_engine, {"default": route})
    assert clusters.engine("default") is placed.control_engine
    assert clusters.url("default") == route


def test_clusters_unknown_name_raises_naming_the_known_ones(placed: Tenancy) -> None:
    with pytest.raises(UnknownCluster, match="c2, default"):
        placed.clusters.engine("nope")


def test_clusters_identity_tells_servers_apart(placed: Tenancy) -> None:
    default, c2 = placed.clusters.identity("default"), placed.clusters.identity("c2")
    assert not default.same_server(c2)
    assert default == placed.clusters.identity("default")


def test_clusters_owner_databases_cover_every_database_once(placed: Tenancy) -> None:
    assert [label for label, _ in placed.clusters.owner_databases()] == [
        "control plane",
        "cluster c2",
    ]
    control = placed.control_engine
    # A cluster whose DSN is the control plane's own is migrated and checked once.
    dsn = control.url.render_as_string(hide_password=False)
    same = Clusters.configured(control, {"default": dsn})
    assert [label for label, _ in same.owner_databases()] == ["control plane"]
    routed = Clusters.configured(control, {"default": "postgresql://127.0.0.1:6432/tenantpool"})
    assert [label for label, _ in routed.owner_databases()] == ["control plane"]


def test_engines_tenant_engine_connects_to_its_cluster(
    placed: Tenancy, make_placed: MakePlaced, second_cluster: LocalCluster
) -> None:
    tenant = make_placed("c2")
    session = placed.open_session(tenant.id)
    try:
        port = session.scalar(sa.text("SELECT inet_server_port()"))
        user = session.scalar(sa.text("SELECT current_user"))
    finally:
        session.close()
    assert port == second_cluster.port
    assert user == f"t_{tenant.id.hex}"


def test_api_tenants_on_two_clusters_are_isolated(
    placed_client: FlaskClient, make_placed: MakePlaced, inspect: Inspector
) -> None:
    on_default, on_c2 = make_placed("default"), make_placed("c2")
    ids = {}
    for tenant in (on_default, on_c2):
        response = placed_client.post(
            "/v1/users", json={"first_name": "Ada", "last_name": "L"}, headers=auth_headers(tenant)
        )
        assert response.status_code == 201
        ids[tenant.id] = response.json["id"]  # type: ignore[index]
    for tenant, other in ((on_default, on_c2), (on_c2, on_default)):
        listed = placed_client.get("/v1/users", headers=auth_headers(tenant)).json
        assert [record["id"] for record in listed["records"]] == [ids[tenant.id]]  # type: ignore[index]
        foreign = placed_client.get(f"/v1/users/{ids[other.id]}", headers=auth_headers(tenant))
        assert foreign.status_code == 404
    assert inspect.tenant_rows("default", "users", on_default.id) == 1
    assert inspect.tenant_rows("c2", "users", on_c2.id) == 1
    assert inspect.tenant_rows("default", "users", on_c2.id) == 0


def test_engines_tenant_on_an_unconfigured_cluster_gets_503(
    placed: Tenancy, placed_client: FlaskClient, make_placed: MakePlaced
) -> None:
    tenant = make_placed("default")
    with placed.control_engine.begin() as connection:
        connection.execute(sa.update(Tenant).where(Tenant.id == tenant.id).values(cluster="gone"))
    placed.forget(tenant.id, "test")
    try:
        response = placed_client.get("/v1/users", headers=auth_headers(tenant))
    finally:
        with placed.control_engine.begin() as connection:
            restore = sa.update(Tenant).where(Tenant.id == tenant.id).values(cluster="default")
            connection.execute(restore)
    assert response.status_code == 503
    assert response.json["code"] == "cluster_unknown"  # type: ignore[index]
