"""Gateway backends bound by a number only the owner draws, not by a snapshot per statement.

Since 0003 a signed tenant context on a gateway connection names its backend by pid and
start time, and the verifier read the start time from ``pg_stat_get_activity``, whose
first call in a transaction copies the status of every backend slot (measured: about 27 µs
per statement at ``max_connections = 100``, more on a larger cluster). Now, on a primary, a
gateway connection draws a number on connect (``tp_private.backend_binding()``, the
gateway's only function) from an owner-only sequence, and the verifier reads it back with
``currval``, from the backend's own memory: about 1 µs. The number is unique in the
cluster and never drawn again, so a signature made for one backend verifies on no other;
nobody but the owner can draw one or set it. A standby cannot draw numbers: there both
sides still use the start time. See docs/security.md, "Two ways to reach a tenant".

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.tenancy.control.context_sql import (
    BACKEND_BINDING,
    BACKEND_BINDING_FUNCTION,
    NONCES,
    VERIFIER,
    VERIFIER_0006,
)
from app.tenancy.control.ddl import CONTEXT_SCHEMA

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_GATEWAY_GRANTS = """
    DO $$ DECLARE gateway name := (SELECT gateway_role FROM {schema}.context);
    BEGIN
      EXECUTE format('{verb} USAGE ON SCHEMA {schema} {to} %I', gateway);
      {function}
    END $$
"""


def _pgcrypto() -> str:
    return str(
        op.get_bind().scalar(
            sa.text(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname = 'pgcrypto'"
            )
        )
    )


def upgrade() -> None:
    op.execute(f"CREATE SEQUENCE {CONTEXT_SCHEMA}.{NONCES} AS bigint NO CYCLE")
    op.execute(f"REVOKE ALL ON SEQUENCE {CONTEXT_SCHEMA}.{NONCES} FROM PUBLIC")
    op.execute(BACKEND_BINDING_FUNCTION.format(schema=CONTEXT_SCHEMA, nonces=NONCES))
    op.execute(f"REVOKE ALL ON FUNCTION {CONTEXT_SCHEMA}.{BACKEND_BINDING} FROM PUBLIC")
    grant = (
        f"EXECUTE format('GRANT EXECUTE ON FUNCTION {CONTEXT_SCHEMA}.{BACKEND_BINDING} "
        "TO %I', gateway);"
    )
    op.execute(_GATEWAY_GRANTS.format(schema=CONTEXT_SCHEMA, verb="GRANT", to="TO", function=grant))
    op.execute(VERIFIER.format(schema=CONTEXT_SCHEMA, pgcrypto=_pgcrypto(), nonces=NONCES))


def downgrade() -> None:
    op.execute(VERIFIER_0006.format(schema=CONTEXT_SCHEMA, pgcrypto=_pgcrypto()))
    op.execute(_GATEWAY_GRANTS.format(schema=CONTEXT_SCHEMA, verb="REVOKE", to="FROM", function=""))
    op.execute(f"DROP FUNCTION {CONTEXT_SCHEMA}.{BACKEND_BINDING}")
    op.execute(f"DROP SEQUENCE {CONTEXT_SCHEMA}.{NONCES}")
