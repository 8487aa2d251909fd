"""Bounded list and search cost: an index per sortable column, led by tenant_id, ending in id.

A list page is ``ORDER BY <sort column>, id LIMIT n``, continued with the ``after=`` cursor
``WHERE (<sort column>, id) > (<value>, <id>)``; a search examines a bounded stretch of rows
in that order (app/api/listing.py). With ``(tenant_id, <sort column>, id)`` each is an index
range scan of the tenant's own rows that stops after the page, whatever the tenant's size,
instead of a sort of every row the tenant has. ``created_at``'s index from
``make_tenant_scoped`` (``ix_<table>_tenant_id_created_at``, on ``(tenant_id, created_at)``)
is replaced by one of the same name that ends in ``id`` too.

Why no trigram index for ``ILIKE '%text%'``: under row level security PostgreSQL may use a
condition inside an index scan only if its operator is leakproof, and ``ILIKE`` is not (a
superuser could mark it so; managed services do not allow that), so a ``pg_trgm`` index
would never serve a tenant's search. Searches are limited instead: see docs/operations.md,
"Cost of a request".

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SORT_INDEXES = {
    "users": ("updated_at", "first_name", "last_name", "email"),
    "products": ("updated_at", "name", "price", "stock"),
    "orders": ("updated_at", "quantity", "status"),
}


def upgrade() -> None:
    for table, columns in SORT_INDEXES.items():
        for column in columns:
            op.create_index(f"ix_{table}_tenant_id_{column}_id", table, ["tenant_id", column, "id"])
        _replace_created_at_index(table, ["tenant_id", "created_at", "id"])


def downgrade() -> None:
    for table, columns in SORT_INDEXES.items():
        for column in columns:
            op.drop_index(f"ix_{table}_tenant_id_{column}_id", table_name=table)
        _replace_created_at_index(table, ["tenant_id", "created_at"])


def _replace_created_at_index(table: str, columns: list[str]) -> None:
    name = f"ix_{table}_tenant_id_created_at"
    op.drop_index(name, table_name=table)
    op.create_index(name, table, columns)
