"""Tenant placements (a secret-free row per tenant a cluster holds) and the move gate.

A data cluster must not hold the control plane's secrets, yet its tenant tables need a
parent row per tenant for ``ON DELETE CASCADE``. So every cluster (the control plane's
database included, which is the ``default`` cluster) gets ``tenant_placements`` and every
foreign key that referenced ``tenants`` now references it. On a data cluster ``tenants``
stays empty; removing a tenant from a cluster is ``DELETE FROM tenant_placements``.

Moving a tenant between clusters needs its writes held still: ``tenant_move_gate()``, run by
every tenant transaction of the service in its first statement, takes the tenant's move
lock shared (``tenant_move_lock``, an advisory lock) or raises SQLSTATE TPM01 while a move
holds it exclusively.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from app.tenancy.control.ddl import TENANT_BASE_ROLE

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _repoint_foreign_keys(old: str, new: str) -> None:
    """Point every single-column foreign key on ``old`` (a table, key) at ``new`` instead.

    Found in the catalog, so tables a team added with ``make_tenant_scoped`` move too.
    """
    old_table, _ = old.split(".")
    new_table, new_key = new.split(".")
    op.execute(
        f"""
        DO $$ DECLARE r record; BEGIN
          FOR r IN
            SELECT c.conrelid::regclass AS tbl, c.conname, a.attname,
                   c.conrelid::regclass::text AS tbl_name
              FROM pg_constraint c
              JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
             WHERE c.contype = 'f' AND c.confrelid = '{old_table}'::regclass
          LOOP
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
            EXECUTE format(
              'ALTER TABLE %s ADD CONSTRAINT %I FOREIGN KEY (%I) '
              'REFERENCES {new_table} ({new_key}) ON DELETE CASCADE',
              r.tbl, 'fk_' || r.tbl_name || '_' || r.attname || '_{new_table}', r.attname);
          END LOOP;
        END $$
        """
    )


def upgrade() -> None:
    op.create_table(
        "tenant_placements",
        sa.Column("tenant_id", UUID(as_uuid=True), primary_key=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    # Only the owner: foreign-key checks and cascades run as the owner, so tenant roles
    # need no access to it.
    op.execute("REVOKE ALL ON tenant_placements FROM PUBLIC")
    # Before 0002 a tenant's rows could only live beside its tenants row, so every tenant
    # registered here is held here (on a data cluster, tenants is empty: nothing to copy).
    op.execute("INSERT INTO tenant_placements (tenant_id) SELECT id FROM tenants")
    _repoint_foreign_keys("tenants.id", "tenant_placements.tenant_id")
    op.execute(
        """
        CREATE FUNCTION tenant_move_lock(tenant uuid) RETURNS bigint
        LANGUAGE sql IMMUTABLE PARALLEL SAFE
        SET search_path = pg_catalog, pg_temp
        AS $$ SELECT hashtextextended('tenantpool move ' || tenant::text, 0) $$
        """
    )
    # SECURITY INVOKER: it locks for the connected tenant role, found by current_tenant_id().
    op.execute(
        """
        CREATE FUNCTION tenant_move_gate() RETURNS void
        LANGUAGE plpgsql VOLATILE SECURITY INVOKER
        SET search_path = pg_catalog, public, pg_temp
        AS $$
        BEGIN
          IF NOT pg_try_advisory_xact_lock_shared(tenant_move_lock(current_tenant_id())) THEN
            RAISE EXCEPTION 'the tenant is being moved to another cluster'
              USING ERRCODE = 'TPM01', HINT = 'retry in a second';
          END IF;
        END
        $$
        """
    )
    for function in ("tenant_move_lock(uuid)", "tenant_move_gate()"):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        op.execute(f"GRANT EXECUTE ON FUNCTION {function} TO {TENANT_BASE_ROLE}")


def downgrade() -> None:
    # Tenants held here but registered in another database's control plane would lose
    # their parent rows: refuse rather than delete them.
    op.execute(
        """
        DO $$ BEGIN
          IF EXISTS (SELECT FROM tenant_placements p
                      WHERE NOT EXISTS (SELECT FROM tenants t WHERE t.id = p.tenant_id)) THEN
            RAISE EXCEPTION 'this database holds tenants of another control plane: move them '
              'to the control plane''s cluster (flask tenants move) before downgrading';
          END IF;
        END $$
        """
    )
    op.execute("DROP FUNCTION tenant_move_gate()")
    op.execute("DROP FUNCTION tenant_move_lock(uuid)")
    _repoint_foreign_keys("tenant_placements.tenant_id", "tenants.id")
    op.drop_table("tenant_placements")
