"""End users (DESIGN 6): the user and their roles in the signed context; orders become theirs.

- ``tp_private.tenant_context_ok()`` now signs the end user too (``app.user_id``,
  ``app.user_roles``, ``app.user_admin``) and verifies tenants' own connections as well as
  gateway ones (a binding of ``<pid>:0`` there): see app/tenancy/control/context_sql.py.
- ``current_app_user()``, ``current_app_roles()``, ``current_app_is_admin()`` for policies.
- ``orders.created_by`` (the ``sub`` that created the order, NULL for an API key) and the
  restrictive ``user_rows`` policy: a JWT without the admin role sees only its own orders.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.tenancy.control.context_sql import (
    USER_COLUMN,
    USER_FUNCTIONS,
    USER_POLICY,
    VERIFIER_0003,
    VERIFIER_0006,
    make_user_scoped,
    user_function_ddl,
)
from app.tenancy.control.ddl import CONTEXT_SCHEMA

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _pgcrypto() -> str:
    schema = op.get_bind().scalar(
        sa.text(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
            "WHERE e.extname = 'pgcrypto'"
        )
    )
    return str(schema)


def upgrade() -> None:
    op.execute(VERIFIER_0006.format(schema=CONTEXT_SCHEMA, pgcrypto=_pgcrypto()))
    for statement in user_function_ddl():
        op.execute(statement)
    make_user_scoped(op, "orders")


def downgrade() -> None:
    op.execute(f"DROP POLICY {USER_POLICY} ON orders")
    op.execute(f"ALTER TABLE orders DROP COLUMN {USER_COLUMN}")
    for name in USER_FUNCTIONS:
        op.execute(f"DROP FUNCTION {name}")
    op.execute(VERIFIER_0003.format(schema=CONTEXT_SCHEMA, pgcrypto=_pgcrypto()))
