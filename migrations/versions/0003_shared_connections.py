"""Shared connections (DESIGN section 3a): a gateway role, a signed tenant context, a third term.

- ``tp_private`` (owner only; ``tenant_base`` may use it to call the verifier): pgcrypto,
  ``tp_private.context`` (one row: this database's gateway role and a random 256-bit
  signing key), and ``tp_private.tenant_context_ok()``, the verifier.
- The gateway role of this database, ``tp_gateway_<database>``: LOGIN, NOINHERIT, no grant
  but CONNECT, a member of every active tenant role held here (provisioning keeps that
  up from now on). One per database, not one per server: two control planes on one
  server (staging beside production, the test suite's databases) would otherwise each
  set the shared role's password. Its password is set by the first worker that serves a
  tenant shared (``control.gateways``), and kept encrypted in the control plane's new
  ``gateways`` table.
- The owner becomes a member of the gateway role: the verifier (SECURITY DEFINER, so
  running as the owner) must read the gateway backend's start time.
- Every tenant table's ``tenant_isolation`` policy gains
  ``AND (session_user = current_user OR (SELECT tp_private.tenant_context_ok()))``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.tenancy.control.context_sql import VERIFIER_0003
from app.tenancy.control.ddl import (
    CONTEXT_SCHEMA,
    TENANT_BASE_ROLE,
    THREE_TERM_PREDICATE,
    TWO_SIDED_PREDICATE,
    alter_policies_ddl,
)

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# tp_gateway_<database> when the database name is a plain identifier short enough, else a
# digest of it; PostgreSQL cuts identifiers at 63 bytes.
_GATEWAY_ROLE_SQL = """
    CASE WHEN current_database() ~ '^[a-z0-9_]{1,52}$'
         THEN 'tp_gateway_' || current_database()
         ELSE 'tp_gateway_' || substr(md5(current_database()), 1, 20) END
"""


def _alter_policies(predicate: str) -> None:
    """Give every tenant table's isolation policy ``predicate`` (found in the catalog)."""
    op.execute(alter_policies_ddl(predicate))


def upgrade() -> None:
    op.execute(f"CREATE SCHEMA {CONTEXT_SCHEMA}")
    op.execute(f"REVOKE ALL ON SCHEMA {CONTEXT_SCHEMA} FROM PUBLIC")
    op.execute(f"GRANT USAGE ON SCHEMA {CONTEXT_SCHEMA} TO {TENANT_BASE_ROLE}")
    # A trusted extension: the database's owner may create it, as on managed services.
    op.execute(f"CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA {CONTEXT_SCHEMA}")
    op.execute(
        f"""
        CREATE TABLE {CONTEXT_SCHEMA}.context (
          id boolean PRIMARY KEY DEFAULT true CHECK (id),
          gateway_role name NOT NULL,
          key bytea NOT NULL CHECK (length(key) = 32)
        )
        """
    )
    op.execute(f"REVOKE ALL ON {CONTEXT_SCHEMA}.context FROM PUBLIC")
    pgcrypto = op.get_bind().scalar(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'pgcrypto'"
        )
    )
    op.execute(
        f"INSERT INTO {CONTEXT_SCHEMA}.context (gateway_role, key) "
        f"VALUES ({_GATEWAY_ROLE_SQL}, {pgcrypto}.gen_random_bytes(32))"
    )
    op.execute(
        f"""
        DO $$ DECLARE gateway name := (SELECT gateway_role FROM {CONTEXT_SCHEMA}.context);
                      r record;
        BEGIN
          IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = gateway) THEN
            EXECUTE format('CREATE ROLE %I LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE '
                           'NOBYPASSRLS', gateway);
          END IF;
          EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), gateway);
          EXECUTE format('GRANT %I TO CURRENT_USER', gateway);
          -- The active tenants held here; a suspended tenant's role cannot log in.
          FOR r IN SELECT rolname FROM pg_roles JOIN tenant_placements
                     ON rolname = 't_' || replace(tenant_id::text, '-', '')
                   WHERE rolcanlogin
          LOOP
            EXECUTE format('GRANT %I TO %I', r.rolname, gateway);
          END LOOP;
        END $$
        """
    )
    op.execute(VERIFIER_0003.format(schema=CONTEXT_SCHEMA, pgcrypto=pgcrypto))
    op.execute(f"REVOKE ALL ON FUNCTION {CONTEXT_SCHEMA}.tenant_context_ok() FROM PUBLIC")
    op.execute(
        f"GRANT EXECUTE ON FUNCTION {CONTEXT_SCHEMA}.tenant_context_ok() TO {TENANT_BASE_ROLE}"
    )
    _alter_policies(THREE_TERM_PREDICATE)
    op.create_table(
        "gateways",
        sa.Column("database", sa.Text, primary_key=True),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("db_password_encrypted", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.execute("REVOKE ALL ON gateways FROM PUBLIC")


def downgrade() -> None:
    op.drop_table("gateways")
    _alter_policies(TWO_SIDED_PREDICATE)
    op.execute(
        f"""
        DO $$ DECLARE gateway name := (SELECT gateway_role FROM {CONTEXT_SCHEMA}.context);
        BEGIN
          EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM %I', current_database(), gateway);
          EXECUTE format('DROP ROLE %I', gateway);
        END $$
        """
    )
    op.execute(f"DROP SCHEMA {CONTEXT_SCHEMA} CASCADE")
