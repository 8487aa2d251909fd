"""Tenant-safe references: UNIQUE (tenant_id, id) on every tenant table; orders.

A reference between tenant tables is ``(tenant_id, user_id) REFERENCES users (tenant_id,
id)`` (``ddl.tenant_reference``), so a row can never name another tenant's row: a plain
``REFERENCES users (id)`` is checked by PostgreSQL past RLS and would accept one. The
composite reference needs ``UNIQUE (tenant_id, id)`` on the table it points at;
``make_tenant_scoped`` adds it to tables made from now on, this adds it to the tenant tables
made before (found in the catalog: users, products, and any a team added).

``orders`` (app/models/order.py) is the worked example of docs/extending.md: a table, made
tenant-scoped in one call, and its two references to other tenant tables.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from app.tenancy.control.ddl import POLICY_NAME, make_tenant_scoped, tenant_reference

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tenant tables (those with the isolation policy) that have an id column; the
# constraint is named as app/db.py's naming convention names it.
_EACH_TENANT_TABLE = f"""
    SELECT c.oid::regclass AS tbl, c.relname AS name
      FROM pg_class c
     WHERE EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = '{POLICY_NAME}')
       AND EXISTS (SELECT FROM pg_attribute a
                    WHERE a.attrelid = c.oid AND a.attname = 'id' AND NOT a.attisdropped)
"""


def _on_each_tenant_table(alter: str) -> None:
    """Run ``alter``, a format() string of the table (%s) and its key's name (%I), on each."""
    op.execute(
        f"""
        DO $$ DECLARE r record; BEGIN
          FOR r IN {_EACH_TENANT_TABLE} LOOP
            EXECUTE format('{alter}', r.tbl, 'uq_' || r.name || '_tenant_id_id');
          END LOOP;
        END $$
        """
    )


def upgrade() -> None:
    _on_each_tenant_table("ALTER TABLE %s ADD CONSTRAINT %I UNIQUE (tenant_id, id)")
    _create_orders()


def _create_orders() -> None:
    op.create_table(
        "orders",
        sa.Column(
            "id", UUID(as_uuid=True), primary_key=True, server_default=sa.func.gen_random_uuid()
        ),
        sa.Column("user_id", UUID(as_uuid=True), nullable=False),
        sa.Column("product_id", UUID(as_uuid=True), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("quantity >= 1", name="quantity_positive"),
        sa.CheckConstraint("status IN ('pending', 'paid', 'shipped', 'cancelled')", name="status"),
    )
    make_tenant_scoped(op, "orders")
    tenant_reference(op, "orders", "user_id", "users", on_delete="CASCADE")
    tenant_reference(op, "orders", "product_id", "products", on_delete="RESTRICT")


def downgrade() -> None:
    op.drop_table("orders")
    _on_each_tenant_table("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I")
