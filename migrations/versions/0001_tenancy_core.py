"""Tenancy core: tenants, tenant_base, current_tenant_id(), tenant-scoped users and products.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from app.tenancy.control.ddl import TENANT_BASE_ROLE, TWO_SIDED_PREDICATE, make_tenant_scoped

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_AS_IN_0001: dict[str, Any] = {
    "parent": ("tenants", "id"),
    "predicate": TWO_SIDED_PREDICATE,
    "unique_key": False,
}


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    ]


def upgrade() -> None:
    # Roles are cluster-wide: another database of the same server may have made it already.
    op.execute(
        f"""
        DO $$ BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{TENANT_BASE_ROLE}') THEN
            CREATE ROLE {TENANT_BASE_ROLE} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
              NOINHERIT NOBYPASSRLS;
          END IF;
        END $$
        """
    )
    # Only tenant roles (and the owner) may connect; nobody but the owner may create.
    op.execute(
        f"""
        DO $$ BEGIN
          EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC',
                         current_database());
          EXECUTE format('GRANT CONNECT ON DATABASE %I TO {TENANT_BASE_ROLE}',
                         current_database());
        END $$
        """
    )
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")

    # Derives the tenant from the authenticated role's name. SECURITY INVOKER on purpose:
    # inside a SECURITY DEFINER function current_user would be the function's owner.
    op.execute(
        """
        CREATE FUNCTION current_tenant_id() RETURNS uuid
        LANGUAGE sql STABLE PARALLEL SAFE SECURITY INVOKER
        SET search_path = pg_catalog, pg_temp
        AS $$
          SELECT CASE WHEN current_user::text ~ '^t_[0-9a-f]{32}$'
                      THEN substr(current_user::text, 3)::uuid END
        $$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION current_tenant_id() FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION current_tenant_id() TO {TENANT_BASE_ROLE}")

    op.create_table(
        "tenants",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("db_user", sa.Text, nullable=False, unique=True),
        sa.Column("db_password_encrypted", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("api_key_hash", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("cluster", sa.Text, nullable=False, server_default="default"),
        *_timestamps(),
        sa.CheckConstraint("status IN ('active', 'suspended')", name="status"),
    )
    op.execute("REVOKE ALL ON tenants FROM PUBLIC")

    op.create_table(
        "users",
        sa.Column(
            "id", UUID(as_uuid=True), primary_key=True, server_default=sa.func.gen_random_uuid()
        ),
        sa.Column("first_name", sa.String(50), nullable=False),
        sa.Column("last_name", sa.String(50), nullable=False),
        sa.Column("email", sa.String(254)),
        sa.Column("confirmed", sa.Boolean, nullable=False, server_default=sa.false()),
        *_timestamps(),
    )
    # Pinned as they ran: the helper's default parent became tenant_placements in 0002, its
    # default policy gained a third term in 0003, its UNIQUE (tenant_id, id) came with 0004.
    make_tenant_scoped(op, "users", **_AS_IN_0001)

    op.create_table(
        "products",
        sa.Column(
            "id", UUID(as_uuid=True), primary_key=True, server_default=sa.func.gen_random_uuid()
        ),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.String(2000), nullable=False, server_default=""),
        sa.Column("price", sa.Numeric(12, 2), nullable=False),
        sa.Column("stock", sa.Integer, nullable=False, server_default="0"),
        *_timestamps(),
        sa.CheckConstraint("price >= 0", name="price_not_negative"),
        sa.CheckConstraint("stock >= 0", name="stock_not_negative"),
    )
    make_tenant_scoped(op, "products", **_AS_IN_0001)


def downgrade() -> None:
    # Tenant roles belong to this database's tenants: drop them with it.
    op.execute(
        """
        DO $$ DECLARE r record; BEGIN
          FOR r IN SELECT db_user FROM tenants LOOP
            EXECUTE format('DROP ROLE IF EXISTS %I', r.db_user);
          END LOOP;
        END $$
        """
    )
    op.drop_table("products")
    op.drop_table("users")
    op.drop_table("tenants")
    op.execute("DROP FUNCTION current_tenant_id()")
    op.execute(
        f"""
        DO $$ BEGIN
          EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {TENANT_BASE_ROLE}',
                         current_database());
          EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO PUBLIC',
                         current_database());
        END $$
        """
    )
