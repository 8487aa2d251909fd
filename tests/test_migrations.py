"""Migrations on a fresh database: up, down, up again, and the models agree with them."""

from __future__ import annotations

import secrets

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.cli.db import alembic_config
from app.db import Base
from app.devcluster import LocalCluster
from app.tenancy.ddl import tenant_scoped_ddl
from config import psycopg2_url


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
    assert {"tenants", "users", "products"} <= _tables(fresh_url)
    command.downgrade(config, "base")
    assert _tables(fresh_url) == {"alembic_version"}
    command.upgrade(config, "head")
    assert {"tenants", "users", "products"} <= _tables(fresh_url)


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
