"""Migrations on a fresh database: up, down, up again, and the models agree with them."""

from __future__ import annotations

import secrets
import uuid

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.cli.db import alembic_config
from app.db import Base
from app.dev.cluster import LocalCluster
from app.tenancy.control.ddl import tenant_scoped_ddl
from config import psycopg2_url
from tests.support import tenant_tables


@pytest.fixture(scope="module")
def fresh_url(pg_cluster: LocalCluster) -> str:
    """A database of its own, owned by its own non-superuser owner."""
    return psycopg2_url(
        pg_cluster.bootstrap_owner("migration_owner", secrets.token_urlsafe(16), "migrations")
    )


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_upgrade_downgrade_upgrade(fresh_url: str) -> None:
    config = alembic_config(fresh_url)
    command.upgrade(config, "head")
    assert {"tenants", *tenant_tables()} <= _tables(fresh_url)
    command.downgrade(config, "base")
    assert _tables(fresh_url) == {"alembic_version"}
    command.upgrade(config, "head")
    assert {"tenants", *tenant_tables()} <= _tables(fresh_url)


def test_migrations_match_the_models(fresh_url: str) -> None:
    command.upgrade(alembic_config(fresh_url), "head")
    engine = sa.create_engine(fresh_url)
    try:
        with engine.connect() as connection:
            diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    # The tenant index is made by the tenancy helper, not declared on the models.
    diffs = [d for d in diffs if not (d[0] == "remove_index" and "_tenant_id_" in d[1].name)]
    assert diffs == []


def test_migrations_tenant_scoped_ddl_refuses_odd_identifiers() -> None:
    with pytest.raises(ValueError, match="identifier"):
        tenant_scoped_ddl("users; DROP TABLE tenants")


def _scalar(url: str, query: str, **params: object) -> object:
    """Run ``query`` as the owner, committed; its first value if it returns rows."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(sa.text(query), params)
            return result.scalar() if result.returns_rows else None
    finally:
        engine.dispose()


def test_migrations_0002_places_existing_tenants_and_repoints_their_tables(fresh_url: str) -> None:
    config = alembic_config(fresh_url)
    command.upgrade(config, "head")
    command.downgrade(config, "0001")
    tenant_id = uuid.uuid4()
    _scalar(
        fresh_url,
        "INSERT INTO tenants (id, name, db_user, db_password_encrypted, key_id, api_key_hash) "
        "VALUES (:id, 'old', 't_old', 'x', 'k', '\\x00')",
        id=tenant_id,
    )
    command.upgrade(config, "head")
    placed = "SELECT count(*) FROM tenant_placements WHERE tenant_id = :id"
    assert _scalar(fresh_url, placed, id=tenant_id) == 1
    parents = _scalar(
        fresh_url,
        "SELECT string_agg(DISTINCT confrelid::regclass::text, ',') FROM pg_constraint "
        "WHERE contype = 'f' AND conrelid IN ('users'::regclass, 'products'::regclass)",
    )
    assert parents == "tenant_placements"
    command.downgrade(config, "0001")
    command.upgrade(config, "head")
    _scalar(fresh_url, "DELETE FROM tenants WHERE id = :id", id=tenant_id)
    _scalar(fresh_url, "DELETE FROM tenant_placements WHERE tenant_id = :id", id=tenant_id)


def test_migrations_0002_downgrade_refuses_to_orphan_a_data_clusters_tenants(
    fresh_url: str,
) -> None:
    config = alembic_config(fresh_url)
    command.upgrade(config, "head")
    foreign = uuid.uuid4()  # placed here, registered in another control plane
    _scalar(fresh_url, "INSERT INTO tenant_placements (tenant_id) VALUES (:id)", id=foreign)
    with pytest.raises(sa.exc.DBAPIError, match="another control plane"):
        command.downgrade(config, "0001")
    _scalar(fresh_url, "DELETE FROM tenant_placements WHERE tenant_id = :id", id=foreign)
    command.downgrade(config, "0001")
    command.upgrade(config, "head")


def test_migrations_0004_gives_a_teams_own_tenant_table_its_key_too(fresh_url: str) -> None:
    config = alembic_config(fresh_url)
    command.upgrade(config, "head")
    command.downgrade(config, "0003")
    # A table a team made tenant-scoped before 0004 existed: no UNIQUE (tenant_id, id).
    _scalar(fresh_url, "CREATE TABLE invoices (id uuid PRIMARY KEY, created_at timestamptz)")
    for statement in tenant_scoped_ddl("invoices", unique_key=False):
        _scalar(fresh_url, statement)
    key = "SELECT count(*) FROM pg_constraint WHERE conname = 'uq_invoices_tenant_id_id'"
    command.upgrade(config, "head")
    assert _scalar(fresh_url, key) == 1
    command.downgrade(config, "0003")
    assert _scalar(fresh_url, key) == 0
    _scalar(fresh_url, "DROP TABLE invoices")
    command.upgrade(config, "head")
