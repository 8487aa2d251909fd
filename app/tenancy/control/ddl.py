"""DDL that makes a table tenant-scoped, for migrations; the one place that knows the policy.

``make_tenant_scoped(op, "invoices")`` in an Alembic migration adds ``tenant_id`` (filled
from the connected role, a foreign key to ``tenant_placements`` so that removing a tenant
from a cluster cascades), an index starting with it, ``UNIQUE (tenant_id, id)`` (what other
tenant tables reference), RLS enabled and forced, the isolation policy and the grants to
``tenant_base``. ``tenant_reference(op, "invoices", "user_id", "users")`` then makes
``(tenant_id, user_id) REFERENCES users (tenant_id, id)``: a reference that cannot name
another tenant's row, which a plain ``REFERENCES users (id)`` can (foreign-key checks
bypass RLS). ``flask tenancy check`` verifies the result.
"""

from __future__ import annotations

import re
from typing import Protocol

TENANT_BASE_ROLE = "tenant_base"
POLICY_NAME = "tenant_isolation"
# Tenant roles are t_ + the tenant id's 32 hex digits; current_tenant_id() parses them back.
TENANT_ROLE_PATTERN = "^t_[0-9a-f]{32}$"
PLACEMENTS_TABLE = "tenant_placements"
"""One secret-free row per tenant held by a cluster; every tenant table references it."""
PLACEMENT_KEY = (PLACEMENTS_TABLE, "tenant_id")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

GATEWAY_ROLE_PATTERN = "^tp_gateway_[a-z0-9_]{1,52}$"
"""Each database's gateway role (migration 0003 names it after the database)."""
CONTEXT_SCHEMA = "tp_private"
"""Owner-only schema of the signed tenant context: its key, the gateway's name, the verifier."""
VERIFIER = f"{CONTEXT_SCHEMA}.tenant_context_ok()"
"""True when a shared connection's tenant context was signed by the service for this backend
and set at the start of the client's message; raises SQLSTATE TPC01 when one is claimed and
does not verify (migration 0003)."""

# Both sides must agree: the role that is connected, and the tenant the request is for.
# Each side is a sub-select so PostgreSQL evaluates it once per statement (an InitPlan) and
# the predicate becomes an index condition on (tenant_id, ...). Migration 0001 made its
# tables with these two sides; 0003 added the third term below.
TWO_SIDED_PREDICATE = (
    "tenant_id = (SELECT current_tenant_id()) "
    "AND tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)"
)
# The third term (DESIGN section 3a): on a tenant's own login the session is the role and
# the verifier never runs; on a shared gateway connection the role was switched with
# SET LOCAL ROLE, and only a context the service signed for this backend counts.
CONTEXT_TERM = f"(session_user = current_user OR (SELECT {VERIFIER}))"
THREE_TERM_PREDICATE = f"{TWO_SIDED_PREDICATE} AND {CONTEXT_TERM}"
"""The policy as migration 0003 made it (kept for 0003 and 0011's downgrade)."""

ROLE_TENANT = (
    f"CASE WHEN CURRENT_USER::pg_catalog.text OPERATOR(pg_catalog.~) '{TENANT_ROLE_PATTERN}' "
    "THEN pg_catalog.substr(CURRENT_USER::pg_catalog.text, 3)::pg_catalog.uuid END"
)
"""The connected role's tenant: ``current_tenant_id()``'s body (migration 0008), spelled out
in the policy, where the planner would otherwise look the function up and parse its body
again for every statement it plans."""
REQUEST_TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
"""The tenant the request is for, as the opening sets it."""
# Since migration 0011 the three terms are one sub-select, one InitPlan per statement: the
# role's tenant if the request is for it and, on a shared connection, its context verifies.
# CASE evaluates its condition left to right, so the verifier runs only when both sides
# agree and the session is the gateway; and it runs whenever they do, an empty table too.
POLICY_PREDICATE = (
    f"tenant_id = (SELECT CASE WHEN {ROLE_TENANT} = {REQUEST_TENANT} "
    f"AND (SESSION_USER = CURRENT_USER OR {VERIFIER}) THEN {ROLE_TENANT} END)"
)
UNVERIFIED_PREDICATE = (
    f"tenant_id = (SELECT CASE WHEN {ROLE_TENANT} = {REQUEST_TENANT} THEN {ROLE_TENANT} END)"
)
"""The policy without its check of the signed context: only for ``make bench``, which
measures what the verifier costs (never safe on a database with a gateway role)."""


def alter_policies_ddl(predicate: str) -> str:
    """SQL giving every tenant table's isolation policy ``predicate`` (found in the catalog)."""
    quoted = predicate.replace("'", "''")
    return f"""
        DO $$ DECLARE r record; BEGIN
          FOR r IN SELECT polrelid::regclass AS tbl FROM pg_policy WHERE polname = '{POLICY_NAME}'
          LOOP
            EXECUTE format('ALTER POLICY {POLICY_NAME} ON %s USING ({quoted})'
                           ' WITH CHECK ({quoted})', r.tbl);
          END LOOP;
        END $$
        """


ON_DELETE = ("CASCADE", "RESTRICT", "NO ACTION")
"""What a tenant reference may do when its parent row goes. ``SET NULL`` would null
``tenant_id`` too, which is NOT NULL: make the column nullable and reference it yourself."""


class _Operations(Protocol):
    def execute(self, sqltext: str) -> object: ...


def check_identifiers(*names: str) -> None:
    """Raise ValueError unless every name is a plain lower-case SQL identifier."""
    for name in names:
        if not _IDENTIFIER.match(name):
            raise ValueError(f"{name!r} is not a plain lower-case SQL identifier")


def unique_key_name(table: str) -> str:
    """The name app/db.py's naming convention gives ``UNIQUE (tenant_id, id)`` of ``table``."""
    return f"uq_{table}_tenant_id_id"


def unique_key_ddl(table: str) -> str:
    """``UNIQUE (tenant_id, id)`` of ``table``: what a tenant reference points at."""
    check_identifiers(table)
    return f"ALTER TABLE {table} ADD CONSTRAINT {unique_key_name(table)} UNIQUE (tenant_id, id)"


def tenant_scoped_ddl(
    table: str,
    *,
    index_column: str = "created_at",
    parent: tuple[str, str] = PLACEMENT_KEY,
    predicate: str = POLICY_PREDICATE,
    unique_key: bool = True,
) -> list[str]:
    """The statements that make ``table`` tenant-scoped; identifiers are checked, not quoted.

    ``parent`` is the (table, column) ``tenant_id`` references: the placements since
    migration 0002; migration 0001 pins ``("tenants", "id")``, as it ran then. Likewise
    ``predicate``: 0001 pins the two-sided one, which 0003 extended; and ``unique_key``
    (``UNIQUE (tenant_id, id)``, which needs an ``id`` column): 0001 pins False, 0004 added
    it to the tables 0001 made.
    """
    referenced, key = parent
    check_identifiers(table, index_column, referenced, key)
    return [
        f"ALTER TABLE {table} ADD COLUMN tenant_id uuid NOT NULL "
        f"DEFAULT current_tenant_id() "
        f"CONSTRAINT fk_{table}_tenant_id_{referenced} "
        f"REFERENCES {referenced} ({key}) ON DELETE CASCADE",
        f"CREATE INDEX ix_{table}_tenant_id_{index_column} ON {table} (tenant_id, {index_column})",
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {POLICY_NAME} ON {table} AS PERMISSIVE FOR ALL TO {TENANT_BASE_ROLE} "
        f"USING ({predicate}) WITH CHECK ({predicate})",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {TENANT_BASE_ROLE}",
        *([unique_key_ddl(table)] if unique_key else []),
    ]


def make_tenant_scoped(
    op: _Operations,
    table: str,
    *,
    index_column: str = "created_at",
    parent: tuple[str, str] = PLACEMENT_KEY,
    predicate: str = POLICY_PREDICATE,
    unique_key: bool = True,
) -> None:
    """Run :func:`tenant_scoped_ddl` through Alembic's ``op``."""
    for statement in tenant_scoped_ddl(
        table, index_column=index_column, parent=parent, predicate=predicate, unique_key=unique_key
    ):
        op.execute(statement)


def reference_name(table: str, column: str, parent: str) -> str:
    """The name app/db.py's naming convention gives the reference ``table.column -> parent``."""
    return f"fk_{table}_{column}_{parent}"


def tenant_reference_ddl(
    table: str, column: str, parent: str, *, on_delete: str = "RESTRICT"
) -> list[str]:
    """``(tenant_id, column) REFERENCES parent (tenant_id, id)``, and the index it needs.

    Both tables must be tenant-scoped, ``parent`` with ``UNIQUE (tenant_id, id)``. The
    reference includes ``tenant_id``, so a row can only name a row of its own tenant: a
    plain ``REFERENCES parent (id)`` is checked by PostgreSQL as the owner, past RLS, and
    would accept another tenant's id. The index on ``(tenant_id, column)`` makes deleting a
    parent row (which looks for rows naming it) an index lookup, not a scan.
    """
    check_identifiers(table, column, parent)
    if on_delete not in ON_DELETE:
        raise ValueError(f"on_delete must be one of {', '.join(ON_DELETE)}, not {on_delete!r}")
    return [
        f"ALTER TABLE {table} ADD CONSTRAINT {reference_name(table, column, parent)} "
        f"FOREIGN KEY (tenant_id, {column}) REFERENCES {parent} (tenant_id, id) "
        f"ON DELETE {on_delete}",
        f"CREATE INDEX ix_{table}_tenant_id_{column} ON {table} (tenant_id, {column})",
    ]


def tenant_reference(
    op: _Operations, table: str, column: str, parent: str, *, on_delete: str = "RESTRICT"
) -> None:
    """Run :func:`tenant_reference_ddl` through Alembic's ``op``."""
    for statement in tenant_reference_ddl(table, column, parent, on_delete=on_delete):
        op.execute(statement)
