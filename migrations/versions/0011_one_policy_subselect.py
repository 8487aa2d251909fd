"""Tenant policies check the role, the request and the signed context in one sub-select.

Since 0003 the isolation policy had three terms, each its own sub-select: the connected
role's tenant (``current_tenant_id()``), the request's (``app.tenant_id``), and the shared
way's check of the signed context. PostgreSQL planned three InitPlans for every statement
on a tenant table, and inlining ``current_tenant_id()`` looks the function up and parses its
body again each time. Now one sub-select gives the role's tenant when the request is for it
and, on a gateway connection, its context verifies, with the role's tenant spelled out (the
function's body): measured, about a tenth of a shared read's server time. The same rows
pass: a role that is no tenant's, a request for another tenant or a context that does not
verify still match none (and the verifier still raises SQLSTATE TPC01). The verifier now
runs on an empty table too, which only fails sooner.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

from app.tenancy.control.ddl import POLICY_PREDICATE, THREE_TERM_PREDICATE, alter_policies_ddl

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(alter_policies_ddl(POLICY_PREDICATE))


def downgrade() -> None:
    op.execute(alter_policies_ddl(THREE_TERM_PREDICATE))
