"""Idempotency keys (issue 20): a keyed write's answer, stored with the write, per tenant and user.

``idempotency_keys`` is a tenant table like any other (``make_tenant_scoped``: RLS enabled
and forced, the isolation policy, the grants), plus the end-user policy of migration 0006 on
``principal`` (the JWT's ``sub``, ``''`` for an API key): a JWT without the admin role sees
only its own keys. The service also looks keys up by ``principal`` explicitly, so an admin
or an API key never replays another user's answer either. ``UNIQUE (tenant_id, principal,
key)`` is the lookup's index; ``(tenant_id, expires_at)`` serves the bounded purge of expired
keys (app/tenancy/serving/idempotency.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

from app.tenancy.control.context_sql import user_policy_ddl
from app.tenancy.control.ddl import make_tenant_scoped

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "idempotency_keys"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column(
            "id", UUID(as_uuid=True), primary_key=True, server_default=sa.func.gen_random_uuid()
        ),
        sa.Column(
            "principal",
            sa.Text,
            nullable=False,
            server_default=sa.text("coalesce(current_app_user(), '')"),
        ),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("headers", JSONB, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("length(key) >= 1", name="key_not_empty"),
    )
    make_tenant_scoped(op, TABLE, index_column="expires_at")
    op.create_unique_constraint(
        "uq_idempotency_keys_tenant_id_principal_key", TABLE, ["tenant_id", "principal", "key"]
    )
    op.execute(user_policy_ddl(TABLE, "principal"))


def downgrade() -> None:
    op.drop_table(TABLE)
