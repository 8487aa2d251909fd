"""DDL that makes a table tenant-scoped, for migrations; the one place that knows the policy.

``make_tenant_scoped(op, "invoices")`` in an Alembic migration adds ``tenant_id`` (filled
from the connected role, a foreign key to ``tenant_placements`` so that removing a tenant
from a cluster cascades), an index starting with it, RLS enabled and forced, the two-sided
policy and the grants to ``tenant_base``. ``flask tenancy check`` verifies the result.
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

# Both sides must agree: the role that is connected, and the tenant the request is for.
# Each side is a sub-select so PostgreSQL evaluates it once per statement (an InitPlan) and
# the predicate becomes an index condition on (tenant_id, ...).
POLICY_PREDICATE = (
    "tenant_id = (SELECT current_tenant_id()) "
    "AND tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)"
)


class _Operations(Protocol):
    def execute(self, sqltext: str) -> object: ...


def tenant_scoped_ddl(
    table: str, *, index_column: str = "created_at", parent: tuple[str, str] = PLACEMENT_KEY
) -> list[str]:
    """The statements that make ``table`` tenant-scoped; identifiers are checked, not quoted.

    ``parent`` is the (table, column) ``tenant_id`` references: the placements since
    migration 0002; migration 0001 pins ``("tenants", "id")``, as it ran then.
    """
    referenced, key = parent
    for name in (table, index_column, referenced, key):
        if not _IDENTIFIER.match(name):
            raise ValueError(f"{name!r} is not a plain lower-case SQL identifier")
    return [
        f"ALTER TABLE {table} ADD COLUMN tenant_id uuid NOT NULL "
        f"DEFAULT current_tenant_id() "
        f"CONSTRAINT fk_{table}_tenant_id_{referenced} "
        f"REFERENCES {referenced} ({key}) ON DELETE CASCADE",
        f"CREATE INDEX ix_{table}_tenant_id_{index_column} ON {table} (tenant_id, {index_column})",
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {POLICY_NAME} ON {table} AS PERMISSIVE FOR ALL TO {TENANT_BASE_ROLE} "
        f"USING ({POLICY_PREDICATE}) WITH CHECK ({POLICY_PREDICATE})",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {TENANT_BASE_ROLE}",
    ]


def make_tenant_scoped(
    op: _Operations,
    table: str,
    *,
    index_column: str = "created_at",
    parent: tuple[str, str] = PLACEMENT_KEY,
) -> None:
    """Run :func:`tenant_scoped_ddl` through Alembic's ``op``."""
    for statement in tenant_scoped_ddl(table, index_column=index_column, parent=parent):
        op.execute(statement)
