"""current_tenant_id() inlined into the statements that use it: no SQL-function call per statement.

Every tenant policy and the move gate call ``current_tenant_id()``. Declared with ``SET
search_path``, PostgreSQL could not inline it: each statement ran it through the SQL
function executor, parsing and planning its body again (measured: about a fifth of a short
statement's server time). Without the SET clause the planner inlines the body; every name
in it is schema-qualified (``pg_catalog``), so no search_path, whatever a session sets,
can change what it means. Same result, same privileges (EXECUTE for tenant_base only).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BODY = """
          SELECT CASE WHEN current_user::text ~ '^t_[0-9a-f]{32}$'
                      THEN substr(current_user::text, 3)::uuid END
"""
_INLINED = """
          SELECT CASE WHEN CURRENT_USER::pg_catalog.text OPERATOR(pg_catalog.~) '^t_[0-9a-f]{32}$'
                      THEN pg_catalog.substr(CURRENT_USER::pg_catalog.text, 3)::pg_catalog.uuid
                 END
"""


def _define(body: str, options: str) -> None:
    op.execute(
        "CREATE OR REPLACE FUNCTION current_tenant_id() RETURNS uuid "
        f"LANGUAGE sql STABLE PARALLEL SAFE SECURITY INVOKER {options} AS $${body}$$"
    )


def upgrade() -> None:
    _define(_INLINED, "")


def downgrade() -> None:
    _define(_BODY, "SET search_path = pg_catalog, pg_temp")
