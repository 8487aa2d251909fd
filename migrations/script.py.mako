"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from collections.abc import Sequence

import sqlalchemy as sa  # noqa: F401 - for the operations below; unused in an empty revision
from alembic import op

# A new tenant table: op.create_table (no tenant_id), then make_tenant_scoped(op, "<table>")
# and one tenant_reference(op, "<table>", "<column>", "<parent>", on_delete=...) per reference
# to another tenant table (docs/extending.md). Never REFERENCES <parent> (id) alone.
from app.tenancy.control.ddl import make_tenant_scoped, tenant_reference  # noqa: F401 - see above
# Rows that belong to the end user who made them: make_user_scoped(op, "<table>") after
# make_tenant_scoped (adds created_by and the restrictive user_rows policy).
from app.tenancy.control.context_sql import make_user_scoped  # noqa: F401 - see above
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
