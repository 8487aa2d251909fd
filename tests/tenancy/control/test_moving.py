"""Moving a tenant between two real PostgreSQL servers, in process (end to end: tests/e2e)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from flask import Flask
from flask.testing import FlaskClient

from app.cli.db import alembic_config
from app.dev.cluster import LocalCluster
from app.models import Tenant
from app.tenancy import Tenancy, tenancy_of
from app.tenancy.control.clusters import Clusters
from app.tenancy.control.moving import MoveError, move_tenant
from app.tenancy.control.provisioning import ProvisionedTenant
from app.tenancy.control.roles import place_tenant
from app.tenancy.control.scram import generate_password, scram_sha256_verifier
from config import psycopg2_url
from tests.support import Inspector, MakePlaced, auth_headers, tenant_tables

WithRows = tuple[ProvisionedTenant, dict[str, list[dict[str, Any]]]]
"""A tenant on ``default`` with users, products and orders, and what the API listed of them."""


def _post(client: FlaskClient, tenant: ProvisionedTenant, path: str, body: dict[str, Any]) -> str:
    response = client.post(path, json=body, headers=auth_headers(tenant))
    assert response.status_code == 201, response.json
    return str(response.json["id"])  # type: ignore[index]


def _records(client: FlaskClient, tenant: ProvisionedTenant, path: str) -> list[dict[str, Any]]:
    response = client.get(path, query_string={"page_size": 100}, headers=auth_headers(tenant))
    assert response.status_code == 200, response.json
    return list(response.json["records"])  # type: ignore[index]


def _cluster_of(tenancy: Tenancy, tenant: ProvisionedTenant) -> str:
    with tenancy.control_engine.connect() as connection:
        query = sa.select(Tenant.cluster).where(Tenant.id == tenant.id)
        return str(connection.execute(query).scalar_one())


def _move(tenancy: Tenancy, tenant: ProvisionedTenant, target: str, **kwargs: Any) -> Any:
    report = move_tenant(
        tenancy.clusters, tenancy.engines, tenancy.limits, tenant.id, target, **kwargs
    )
    # In a worker the MOVED event does this; in process nobody listens.
    tenancy.forget(tenant.id, "moved")
    return report


@pytest.fixture
def tenant_with_rows(
    placed: Tenancy, placed_client: FlaskClient, make_placed: MakePlaced
) -> Iterator[WithRows]:
    tenant = make_placed("default")
    users = [
        _post(placed_client, tenant, "/v1/users", {"first_name": f"U{number}", "last_name": "x"})
        for number in range(25)
    ]
    for number in range(3):
        body = {"name": f"P{number}", "price": number, "stock": number}
        product = _post(placed_client, tenant, "/v1/products", body)
    # Rows that reference others: the copy must write their parents first.
    for user in users[:2]:
        _post(placed_client, tenant, "/v1/orders", {"user_id": user, "product_id": product})
    paths = ("/v1/users", "/v1/products", "/v1/orders")
    before = {path: _records(placed_client, tenant, path) for path in paths}
    yield tenant, before
    placed.forget(tenant.id, "test over")


def test_moving_copies_every_row_and_removes_the_old_copy(
    placed: Tenancy,
    placed_client: FlaskClient,
    tenant_with_rows: WithRows,
    inspect: Inspector,
) -> None:
    tenant, before = tenant_with_rows
    seen: list[tuple[str, int, int]] = []
    report = _move(placed, tenant, "c2", progress=lambda *step: seen.append(step), batch_size=10)
    copied = {"users": 25, "products": 3, "orders": 2}
    assert report.rows == {**dict.fromkeys(tenant_tables(), 0), **copied}
    assert ("users", 10, 25) in seen
    assert ("users", 25, 25) in seen
    assert _cluster_of(placed, tenant) == "c2"
    after = {path: _records(placed_client, tenant, path) for path in before}
    assert after == before  # ids, timestamps, every field
    assert inspect.tenant_rows("c2", "users", tenant.id) == 25
    assert inspect.holds_nothing_of("default", tenant.id)
    assert inspect.has_role("c2", tenant.id)


def test_moving_there_and_back_keeps_serving(
    placed: Tenancy,
    placed_client: FlaskClient,
    tenant_with_rows: WithRows,
    inspect: Inspector,
) -> None:
    tenant, before = tenant_with_rows
    _move(placed, tenant, "c2")
    new_id = _post(placed_client, tenant, "/v1/users", {"first_name": "On", "last_name": "c2"})
    _move(placed, tenant, "default")
    ids = {record["id"] for record in _records(placed_client, tenant, "/v1/users")}
    assert ids == {record["id"] for record in before["/v1/users"]} | {new_id}
    assert inspect.holds_nothing_of("c2", tenant.id)


def test_moving_to_where_it_is_changes_nothing(
    placed: Tenancy, make_placed: MakePlaced, inspect: Inspector
) -> None:
    tenant = make_placed("c2")
    report = _move(placed, tenant, "c2")
    assert (report.source, report.target, report.removed_from) == ("c2", "c2", ())
    assert inspect.placed("c2", tenant.id)


def test_moving_again_removes_a_copy_an_interrupted_move_left(
    placed: Tenancy, make_placed: MakePlaced, inspect: Inspector
) -> None:
    tenant = make_placed("c2")
    # What a move from default that died after its switch leaves behind.
    with placed.control_engine.begin() as connection:
        verifier = scram_sha256_verifier(generate_password(), 64)
        place_tenant(connection, tenant.id, verifier, placed.limits)
    report = _move(placed, tenant, "c2")
    assert report.removed_from == ("default",)
    assert inspect.holds_nothing_of("default", tenant.id)
    assert inspect.placed("c2", tenant.id)


def test_moving_failed_copy_leaves_the_tenant_at_home(
    placed: Tenancy,
    placed_client: FlaskClient,
    tenant_with_rows: WithRows,
    inspect: Inspector,
) -> None:
    tenant, before = tenant_with_rows

    def fail_midway(table: str, copied: int, total: int) -> None:
        if copied:
            raise RuntimeError("disk full, say")

    with pytest.raises(RuntimeError, match="disk full"):
        _move(placed, tenant, "c2", progress=fail_midway, batch_size=5)
    assert _cluster_of(placed, tenant) == "default"
    assert inspect.holds_nothing_of("c2", tenant.id)
    # Its role may log in again, and it still has every row.
    assert _records(placed_client, tenant, "/v1/users") == before["/v1/users"]


@pytest.mark.parametrize("way", ["dedicated", "shared"])
def test_moving_tenant_gets_503_with_retry_after_while_frozen(
    placed: Tenancy,
    placed_client: FlaskClient,
    placed_shared_app: Flask,
    make_placed: MakePlaced,
    way: str,
) -> None:
    client = placed_client if way == "dedicated" else placed_shared_app.test_client()
    tenant, bystander = make_placed("c2"), make_placed("c2")
    assert client.get("/v1/users", headers=auth_headers(tenant)).status_code == 200
    with placed.clusters.engine("c2").connect() as owner:
        lock = sa.text("SELECT pg_advisory_xact_lock(tenant_move_lock(:tenant))")
        owner.execute(lock, {"tenant": tenant.id})
        frozen = client.get("/v1/users", headers=auth_headers(tenant))
        other = client.get("/v1/users", headers=auth_headers(bystander))
        owner.rollback()
    assert frozen.status_code == 503
    assert frozen.headers["Retry-After"] == "1"
    assert frozen.json["code"] == "tenant_moving"  # type: ignore[index]
    assert other.status_code == 200
    assert client.get("/v1/users", headers=auth_headers(tenant)).status_code == 200


def test_moving_keeps_serving_the_shared_way(
    placed: Tenancy, placed_shared_app: Flask, tenant_with_rows: WithRows
) -> None:
    """After the switch the tenant's shared requests go to the target's gateway pool."""
    tenant, before = tenant_with_rows
    shared = tenancy_of(placed_shared_app)
    client = placed_shared_app.test_client()
    assert {path: _records(client, tenant, path) for path in before} == before
    _move(placed, tenant, "c2")
    shared.forget(tenant.id, "moved")  # what the MOVED event does in a worker
    assert {path: _records(client, tenant, path) for path in before} == before
    assert "c2" in shared.gateways.clusters()


def test_moving_unknown_tenant_is_refused(placed: Tenancy) -> None:
    with pytest.raises(MoveError, match="no tenant"):
        move_tenant(placed.clusters, placed.engines, placed.limits, uuid.uuid4(), "c2")


@pytest.fixture(scope="module")
def same_server_url(pg_cluster: LocalCluster) -> str:
    """Another database of the control plane's own server, at migration 0001 only."""
    url = pg_cluster.bootstrap_owner("tenantpool_b", secrets.token_urlsafe(16), "tenantpool_b")
    command.upgrade(alembic_config(psycopg2_url(url)), "0001")
    return psycopg2_url(url)


def test_moving_refuses_a_cluster_at_another_migration(
    placed: Tenancy, make_placed: MakePlaced, same_server_url: str
) -> None:
    tenant = make_placed("default")
    clusters = Clusters(
        placed.control_engine,
        {"default": placed.clusters.url("default"), "b": sa.make_url(same_server_url)},
    )
    with pytest.raises(MoveError, match="flask db upgrade"):
        move_tenant(clusters, placed.engines, placed.limits, tenant.id, "b")
    command.upgrade(alembic_config(same_server_url), "head")
    with pytest.raises(MoveError, match="one PostgreSQL server"):
        move_tenant(clusters, placed.engines, placed.limits, tenant.id, "b")
    clusters.dispose()
    assert _cluster_of(placed, tenant) == "default"
