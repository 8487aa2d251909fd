"""Tenant-safe references: UNIQUE (tenant_id, id) on every tenant table.

A reference between tenant tables is ``(tenant_id, user_id) REFERENCES users (tenant_id,
id)`` (``ddl.tenant_reference``), so a row can never name another tenant's row: a plain
``REFERENCES users (id)`` is checked by PostgreSQL past RLS and would accept one. The
composite reference needs ``UNIQUE (tenant_id, id)`` on the table it points at;
``make_tenant_scoped`` adds it to tables made from now on, this adds it to the tenant tables
made before (found in the catalog: users, products, and any a team added).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from collections.abc import Sequence

from alembic import op

from app.tenancy.control.ddl import POLICY_NAME

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


def upgrade() -> None:
    op.execute(
        f"""
        DO $$ DECLARE r record; BEGIN
          FOR r IN {_EACH_TENANT_TABLE} LOOP
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I UNIQUE (tenant_id, id)',
                           r.tbl, 'uq_' || r.name || '_tenant_id_id');
          END LOOP;
        END $$
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        DO $$ DECLARE r record; BEGIN
          FOR r IN {_EACH_TENANT_TABLE} LOOP
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I',
                           r.tbl, 'uq_' || r.name || '_tenant_id_id');
          END LOOP;
        END $$
        """
    )
