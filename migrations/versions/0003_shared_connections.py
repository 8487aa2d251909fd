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

from app.tenancy.control.ddl import (
    CONTEXT_SCHEMA,
    POLICY_NAME,
    POLICY_PREDICATE,
    TENANT_BASE_ROLE,
    TWO_SIDED_PREDICATE,
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

# Signed over "<tenant>:<backend pid>:<backend start in microseconds>" with the database's
# key; the service computes the same from what it read on connect (serving/gateway.py).
# The signature must also open the client's message (current_query()), which no SQL run
# inside that message can change: a signature read elsewhere (pg_stat_activity shows the
# last query of every backend of the same role) cannot be replayed by injected SQL, even on
# the backend it was made for. A claimed context that fails raises TPC01, so a mistake
# (a transaction-mode pooler, a statement without the opening) is loud, never silent.
_VERIFIER = """
CREATE FUNCTION {schema}.tenant_context_ok() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $verifier$
DECLARE
  tenant text := current_setting('app.tenant_id', true);
  signature text := current_setting('app.tenant_sig', true);
  started timestamptz;
BEGIN
  IF coalesce(signature, '') = '' THEN
    RETURN false;
  END IF;
  SELECT a.backend_start INTO started FROM pg_stat_get_activity(pg_backend_pid()) AS a;
  IF signature = encode({pgcrypto}.hmac(
         convert_to(coalesce(tenant, '') || ':' || pg_backend_pid() || ':'
                    || (extract(epoch FROM started) * 1000000)::bigint, 'UTF8'),
         (SELECT key FROM {schema}.context), 'sha256'), 'hex')
     AND starts_with(current_query(), 'SELECT set_config(''app.tenant_sig'', '''
                                      || signature || ''', true)')
  THEN
    RETURN true;
  END IF;
  RAISE EXCEPTION 'the tenant context of this transaction does not verify'
    USING ERRCODE = 'TPC01';
END
$verifier$
"""


def _alter_policies(predicate: str) -> None:
    """Give every tenant table's isolation policy ``predicate`` (found in the catalog)."""
    op.execute(
        f"""
        DO $$ DECLARE r record; BEGIN
          FOR r IN SELECT polrelid::regclass AS tbl FROM pg_policy WHERE polname = '{POLICY_NAME}'
          LOOP
            EXECUTE format('ALTER POLICY {POLICY_NAME} ON %s USING ({predicate.replace("'", "''")})'
                           ' WITH CHECK ({predicate.replace("'", "''")})', r.tbl);
          END LOOP;
        END $$
        """
    )


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
    op.execute(_VERIFIER.format(schema=CONTEXT_SCHEMA, pgcrypto=pgcrypto))
    op.execute(f"REVOKE ALL ON FUNCTION {CONTEXT_SCHEMA}.tenant_context_ok() FROM PUBLIC")
    op.execute(
        f"GRANT EXECUTE ON FUNCTION {CONTEXT_SCHEMA}.tenant_context_ok() TO {TENANT_BASE_ROLE}"
    )
    _alter_policies(POLICY_PREDICATE)
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
